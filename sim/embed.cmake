# embed.cmake - cmake -DIN=file -DOUT=file.c -P embed.cmake: writes IN as a C byte array
# (moeh_varmap_csv, NUL-terminated) and its length (moeh_varmap_csv_len, without the NUL).
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} by embed.cmake */\n#include <stddef.h>\n"
     "const unsigned char moeh_varmap_csv[] = {${bytes} 0x00};\n"
     "const size_t moeh_varmap_csv_len = ${len};\n")
