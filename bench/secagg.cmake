# bench_secagg: secure-aggregation masking + unmasking vs plain summation (not in ctest).
add_executable(bench_secagg ${CMAKE_CURRENT_LIST_DIR}/secagg.c)
target_link_libraries(bench_secagg PRIVATE moeh_proto)
set_target_properties(bench_secagg PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
