# bench/extract.cmake - bench_extract: moeh extract vs a pandas pipeline (see extract.c).
add_executable(bench_extract ${CMAKE_CURRENT_LIST_DIR}/extract.c)
target_link_libraries(bench_extract PRIVATE moeh_cohort)
target_compile_definitions(bench_extract PRIVATE MOEH_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
