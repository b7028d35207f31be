# Tests of `moeh train` (sim/cmd_train.c): centralised training on a small synthetic
# MIMIC-IV, evaluation on another dataset, usage errors. Runs the moeh binary.
if(TARGET moeh AND TARGET moeh_agent)
    moeh_add_test(test_train SOURCES test_train.c LIBS moeh_cohort PkgConfig::CJSON TIMEOUT 300)
    add_dependencies(test_train moeh)
endif()
# Metrics from summed evaluation histograms (train/moeh_evalsum.h), against hand-computed values.
moeh_add_test(test_evalsum SOURCES test_evalsum.c LIBS moeh_train)
