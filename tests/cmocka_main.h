/* cmocka_main.h - the main() of a CMocka test program in one line:
 *
 *   MOEH_TEST_MAIN(group_setup, group_teardown, cmocka_unit_test(test_a), ...)
 *   MOEH_TEST_MAIN_INIT(statement, group_setup, group_teardown, ...)   (statement runs first)
 *
 * Include after <cmocka.h>. Every test program had the same eight lines around its list. */
#ifndef MOEH_CMOCKA_MAIN_H
#define MOEH_CMOCKA_MAIN_H

#define MOEH_TEST_MAIN_INIT(init, group_setup, group_teardown, ...)                                \
    int main(void)                                                                                 \
    {                                                                                              \
        init;                                                                                      \
        const struct CMUnitTest tests[] = {__VA_ARGS__};                                           \
        return cmocka_run_group_tests(tests, group_setup, group_teardown);                         \
    }

#define MOEH_TEST_MAIN(group_setup, group_teardown, ...)                                           \
    MOEH_TEST_MAIN_INIT((void)0, group_setup, group_teardown, __VA_ARGS__)

#endif
