# The self-describing model file (train/moeh_modelfile.h, docs/model-file.md): round trip and
# every corrupt case (test_modelfile); `moeh predict` through the binary (test_predict); the
# file loaded by a stdlib-only safetensors reader into a PyTorch reference of the model, whose
# predictions match the C predict within 1e-4 (test_modelfile_torch, Debian's python3-torch).
moeh_add_test(test_modelfile SOURCES test_modelfile.c LIBS moeh_train PkgConfig::CJSON)
if(TARGET moeh AND TARGET moeh_cohort)
    moeh_add_test(test_predict SOURCES test_predict.c LIBS moeh_cohort moeh_train TIMEOUT 400)
    add_dependencies(test_predict moeh moeh-coordinator moeh-site-agent)
    set_tests_properties(test_predict PROPERTIES LABELS multiprocess)
endif()
# MOEH_TORCH_PYTHON3: tests/CMakeLists.txt. torch missing is a failure, not a skip.
if(TARGET moeh)
    add_test(NAME test_modelfile_torch
             COMMAND ${MOEH_TORCH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_modelfile_torch.py
                     --bin-dir ${PROJECT_BINARY_DIR}/bin)
    set_tests_properties(test_modelfile_torch PROPERTIES TIMEOUT 300
        ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
endif()
