# sim/data.cmake - the cohort library (moeh_cohort): streaming gzip CSV,
# MIMIC-IV cohort extraction, the synthetic MIMIC-IV
# generator and site splits; plus the sources of `moeh extract|synth|split`.
# Inflate uses ISA-L's igzip (several times zlib's speed on this machine); JPEG via TurboJPEG
# (scaled decoding), PNG via libpng.
moeh_require(ISAL libisal libisal-dev)
moeh_require(TURBOJPEG libturbojpeg libturbojpeg0-dev)
moeh_require(PNG libpng libpng-dev)
set(MOEH_DATA_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/csv.c
    ${CMAKE_CURRENT_LIST_DIR}/extract.c
    ${CMAKE_CURRENT_LIST_DIR}/extract_streams.c
    ${CMAKE_CURRENT_LIST_DIR}/extract_embed.c
    ${CMAKE_CURRENT_LIST_DIR}/image.c
    ${CMAKE_CURRENT_LIST_DIR}/synth.c
    ${CMAKE_CURRENT_LIST_DIR}/synth_het.c
    ${CMAKE_CURRENT_LIST_DIR}/synth_io.c
    ${CMAKE_CURRENT_LIST_DIR}/split.c)
add_library(moeh_cohort STATIC ${MOEH_DATA_SOURCES})
target_include_directories(moeh_cohort PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_definitions(moeh_cohort PRIVATE MOEH_HAVE_ISAL=1)
find_package(Threads REQUIRED)
target_link_libraries(moeh_cohort PUBLIC moeh_data moeh_common Threads::Threads PkgConfig::ZLIB PkgConfig::ISAL
                      PkgConfig::TURBOJPEG PkgConfig::PNG PkgConfig::XXHASH PkgConfig::CJSON)

# The shipped variable map is embedded in the library (sim/variables.csv -> a byte array).
set(MOEH_VARMAP_C ${CMAKE_CURRENT_BINARY_DIR}/varmap_embed.c)
add_custom_command(OUTPUT ${MOEH_VARMAP_C}
    COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_CURRENT_LIST_DIR}/variables.csv -DOUT=${MOEH_VARMAP_C}
            -P ${CMAKE_CURRENT_LIST_DIR}/embed.cmake
    DEPENDS ${CMAKE_CURRENT_LIST_DIR}/variables.csv ${CMAKE_CURRENT_LIST_DIR}/embed.cmake
    COMMENT "Embedding sim/variables.csv")
target_sources(moeh_cohort PRIVATE ${MOEH_VARMAP_C})

# The subcommands, reached through moeh (sim/main.c).
list(APPEND MOEH_SIM_CMD_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/cmd_extract.c
    ${CMAKE_CURRENT_LIST_DIR}/cmd_synth.c
    ${CMAKE_CURRENT_LIST_DIR}/cmd_split.c)
list(APPEND MOEH_SIM_CMD_LIBS moeh_cohort)
