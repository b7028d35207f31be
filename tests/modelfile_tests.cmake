# The self-describing model file (train/moeh_modelfile.h, docs/model-file.md): round trip and
# every corrupt case (test_modelfile); `moeh predict` through the binary (test_predict); the
# file loaded by a stdlib-only safetensors reader into a PyTorch reference of the model, whose
# predictions match the C predict within 1e-4 (test_modelfile_torch, Debian's python3-torch).
moeh_add_test(test_modelfile SOURCES test_modelfile.c LIBS moeh_train PkgConfig::CJSON)
if(TARGET moeh AND TARGET moeh_cohort)
    moeh_add_test(test_predict SOURCES test_predict.c LIBS moeh_cohort TIMEOUT 300)
    add_dependencies(test_predict moeh)
endif()
