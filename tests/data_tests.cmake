# Tests of the dataset library (sim/data.cmake): CSV reader, dataset format, extraction,
# synthetic MIMIC-IV round trip, site splits.
moeh_add_test(test_csv SOURCES test_csv.c LIBS moeh_cohort)
moeh_add_test(test_dataset SOURCES test_dataset.c LIBS moeh_cohort)
moeh_add_test(test_extract SOURCES test_extract.c LIBS moeh_cohort PkgConfig::ZLIB)
moeh_add_test(test_synth SOURCES test_synth.c LIBS moeh_cohort PkgConfig::XXHASH)
moeh_add_test(test_split SOURCES test_split.c LIBS moeh_cohort)
moeh_add_test(test_image SOURCES test_image.c LIBS moeh_cohort PkgConfig::TURBOJPEG PkgConfig::PNG)
moeh_add_test(test_data_cli SOURCES test_data_cli.c LIBS moeh_common)
if(TARGET moeh)
    add_dependencies(test_data_cli moeh)
endif()

# The synthetic generator's profiles (docs/synthetic.md): the heterogeneous profile's stated
# effects are present in the generated files; the default (homogeneous) output is unchanged.
if(TARGET moeh)
    find_program(MOEH_PYTHON3 python3 REQUIRED)
    add_test(NAME test_heterogeneous
             COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_heterogeneous.py
                     $<TARGET_FILE:moeh> heterogeneous)
    add_test(NAME test_homogeneous_unchanged
             COMMAND ${MOEH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_heterogeneous.py
                     $<TARGET_FILE:moeh> homogeneous)
    set_tests_properties(test_heterogeneous test_homogeneous_unchanged PROPERTIES TIMEOUT 300)
endif()

# Precomputed embeddings end to end (docs/data.md 5.1): scripts/cxr_embed.py (random-init
# torchvision DenseNet-121) on the synthetic MIMIC-CXR JPEGs and the NIH sample, synthetic note
# vectors, moeh extract --note-embeddings --cxr-embeddings (means checked independently),
# moeh train and predict on them, and the width / missing / unused-vector errors. Debian's
# /usr/bin/python3 with python3-torchvision (MOEH_TORCH_PYTHON3): its absence is a failure, not
# a skip.
if(TARGET moeh)
    add_test(NAME test_embed_e2e
             COMMAND ${MOEH_TORCH_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_embed_e2e.py
                     --bin-dir ${PROJECT_BINARY_DIR}/bin
                     --script ${PROJECT_SOURCE_DIR}/scripts/cxr_embed.py)
    set_tests_properties(test_embed_e2e PROPERTIES TIMEOUT 600
        ENVIRONMENT "OPENBLAS_NUM_THREADS=1")
endif()
