# Tests of hostile files with valid checksums (issue 13, finding 9).
moeh_add_test(test_badfiles_ckpt SOURCES test_badfiles_ckpt.c LIBS moeh_coordinator PkgConfig::XXHASH)
moeh_add_test(test_badfiles_proc SOURCES test_badfiles_proc.c LIBS moeh_data PkgConfig::XXHASH
              TIMEOUT 120 LABELS multiprocess)
add_dependencies(test_badfiles_proc moeh-site-agent moeh-keygen moeh-coordinator)
