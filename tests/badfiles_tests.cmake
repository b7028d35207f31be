# Tests of hostile files with valid checksums (issue 13, finding 9).
moeh_add_test(test_badfiles_ckpt SOURCES test_badfiles_ckpt.c LIBS moeh_coordinator PkgConfig::XXHASH)
