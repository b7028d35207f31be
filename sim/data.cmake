# sim/data.cmake - the dataset library (moeh_data): streaming gzip CSV, the dataset format
# (writer + mmap reader with validation), MIMIC-IV cohort extraction, the synthetic MIMIC-IV
# generator and site splits; plus the sources of `moeh-sim extract|synth|split`.
# Inflate uses ISA-L's igzip (several times zlib's speed on this machine); JPEG via TurboJPEG
# (scaled decoding), PNG via libpng.
moeh_require(ISAL libisal libisal-dev)
moeh_require(TURBOJPEG libturbojpeg libturbojpeg0-dev)
moeh_require(PNG libpng libpng-dev)
set(MOEH_DATA_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/csv.c
    ${CMAKE_CURRENT_LIST_DIR}/dataset.c)
add_library(moeh_data STATIC ${MOEH_DATA_SOURCES})
target_include_directories(moeh_data PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_definitions(moeh_data PRIVATE MOEH_HAVE_ISAL=1)
target_link_libraries(moeh_data PUBLIC moeh_common PkgConfig::ZLIB PkgConfig::ISAL
                      PkgConfig::TURBOJPEG PkgConfig::PNG PkgConfig::XXHASH PkgConfig::CJSON)
