# moeh-bench-train-step: MoE-Health training step vs PyTorch and vs plain sgemm (not in ctest).
add_executable(moeh-bench-train-step ${CMAKE_CURRENT_SOURCE_DIR}/train_step.c)
target_include_directories(moeh-bench-train-step PRIVATE ${PROJECT_SOURCE_DIR}/tests)
target_compile_definitions(moeh-bench-train-step PRIVATE MOEH_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_link_libraries(moeh-bench-train-step PRIVATE moeh_model)
set_target_properties(moeh-bench-train-step PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
