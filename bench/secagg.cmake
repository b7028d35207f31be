# bench_secagg: secure-aggregation masking + unmasking vs plain summation (not in ctest).
add_executable(bench_secagg ${CMAKE_CURRENT_LIST_DIR}/secagg.c)
target_link_libraries(bench_secagg PRIVATE moeh_proto)
set_target_properties(bench_secagg PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
# bench_secagg_plan: the SecAgg+ k and t the planner picks per federation size (not in ctest).
add_executable(bench_secagg_plan ${CMAKE_CURRENT_LIST_DIR}/secagg_plan.c)
target_link_libraries(bench_secagg_plan PRIVATE moeh_fed)
set_target_properties(bench_secagg_plan PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
