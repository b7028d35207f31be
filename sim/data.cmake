# sim/data.cmake - the dataset library (moeh_data): streaming gzip CSV, the dataset format
# (writer + mmap reader with validation), MIMIC-IV cohort extraction, the synthetic MIMIC-IV
# generator and site splits; plus the sources of `moeh-sim extract|synth|split`.
set(MOEH_DATA_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/csv.c)
add_library(moeh_data STATIC ${MOEH_DATA_SOURCES})
target_include_directories(moeh_data PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(moeh_data PUBLIC moeh_common PkgConfig::ZLIB)
