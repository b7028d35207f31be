# Tests of model/ (layers, MoE-Health, PyTorch reference, metrics, checkpoints).
moeh_add_test(test_layers SOURCES test_layers.c LIBS moeh_model)
moeh_add_test(test_moe SOURCES test_moe.c LIBS moeh_model)
moeh_add_test(test_torch_ref SOURCES test_torch_ref.c LIBS moeh_model)
moeh_add_test(test_moe_learn SOURCES test_moe_learn.c LIBS moeh_model)
moeh_add_test(test_metrics SOURCES test_metrics.c LIBS moeh_model)
moeh_add_test(test_checkpoint SOURCES test_checkpoint.c LIBS moeh_model)
moeh_add_test(test_text SOURCES test_text.c LIBS moeh_model)
moeh_add_test(test_noalloc SOURCES test_noalloc.c LIBS moeh_model)
