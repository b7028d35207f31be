/* test_image.c - chest X-ray preprocessing on real NIH ChestX-ray14 PNGs (../shared/data):
 * every sample decodes; a JPEG made from the same pixels goes through TurboJPEG's scaled
 * decoding and gives (nearly) the same 64 x 64 image as the PNG path; crop and box filter
 * on synthetic inputs; unreadable and missing files are errors that name the file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_extract.h"

#include <dirent.h>
#include <math.h>
#include <png.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

MOEH_TEST_DIR_FIXTURE("image")

static void test_resize(void **state)
{
    uint8_t src[6 * 4], out[4];
    for (size_t y = 0; y < 4; y++)
        for (size_t x = 0; x < 6; x++)
            src[y * 6 + x] = (uint8_t)(x == 0 || x == 5 ? 255 : (y < 2 ? 10 : 30));
    /* 6x4 is centre-cropped to columns 1..4, then 2x2 blocks are averaged */
    moeh_image_resize_gray(out, 2, src, 6, 4);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[1], 10);
    assert_int_equal(out[2], 30);
    assert_int_equal(out[3], 30);
    uint8_t up[4 * 4];
    moeh_image_resize_gray(up, 4, out, 2, 2); /* upsampling repeats pixels */
    assert_int_equal(up[0], 10);
    assert_int_equal(up[15], 30);
}

static uint8_t *read_png_gray(const char *path, unsigned *w, unsigned *h)
{
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    assert_true(png_image_begin_read_from_file(&im, path));
    im.format = PNG_FORMAT_GRAY;
    uint8_t *pix = malloc(PNG_IMAGE_SIZE(im));
    assert_non_null(pix);
    assert_true(png_image_finish_read(&im, NULL, pix, 0, NULL));
    *w = im.width, *h = im.height;
    return pix;
}

static void test_real_png_and_jpeg(void **state)
{
    char d[512];
    snprintf(d, sizeof d, "%s/images_1024", moeh_test_cxr_sample_dir());
    DIR *dir = opendir(d);
    if (!dir) skip();
    closedir(dir);
    moeh_err_t err = {0};
    size_t n = 0;
    const char *sub[] = {"images_1024", "images_256"};
    for (int s = 0; s < 2; s++) {
        snprintf(d, sizeof d, "%s/%s", moeh_test_cxr_sample_dir(), sub[s]);
        dir = opendir(d);
        assert_non_null(dir);
        struct dirent *e;
        while ((e = readdir(dir))) {
            if (!strstr(e->d_name, ".png")) continue;
            char p[1024], jp[1024];
            snprintf(p, sizeof p, "%s/%s", d, e->d_name);
            uint8_t a[64 * 64], b[64 * 64];
            int rc = moeh_image_load_gray(p, 64, a, &err);
            if (rc) fail_msg("%s", err.msg);
            double mean = 0, var = 0;
            for (int i = 0; i < 64 * 64; i++)
                mean += a[i];
            mean /= 64 * 64;
            for (int i = 0; i < 64 * 64; i++)
                var += (a[i] - mean) * (a[i] - mean);
            assert_true(mean > 20 && mean < 235 && sqrt(var / 4096) > 10); /* a real image */

            /* the same pixels as a JPEG: decoded at 1/8 (1024) or 1/4 (256) scale */
            unsigned w, h;
            uint8_t *pix = read_png_gray(p, &w, &h);
            tjhandle tj = tjInitCompress();
            unsigned char *jpg = NULL;
            unsigned long jl = 0;
            assert_int_equal(
                tjCompress2(tj, pix, (int)w, 0, (int)h, TJPF_GRAY, &jpg, &jl, TJSAMP_GRAY, 95, 0),
                0);
            snprintf(jp, sizeof jp, "%s/%s.jpg", g_dir, e->d_name);
            FILE *f = fopen(jp, "wb");
            assert_int_equal(fwrite(jpg, 1, jl, f), jl);
            fclose(f);
            tjFree(jpg);
            tjDestroy(tj);
            free(pix);
            assert_int_equal(moeh_image_load_gray(jp, 64, b, &err), 0);
            double mad = 0;
            for (int i = 0; i < 64 * 64; i++)
                mad += fabs((double)a[i] - (double)b[i]);
            mad /= 64 * 64;
            if (mad > 2.0)
                fail_msg("%s: PNG and JPEG paths differ by %.2f gray levels on average", p, mad);
            n++;
        }
        closedir(dir);
    }
    assert_int_equal(n, 17);
}

static void test_errors(void **state)
{
    moeh_err_t err = {0};
    uint8_t out[64 * 64];
    char p[512];
    snprintf(p, sizeof p, "%s/none.jpg", g_dir);
    assert_int_equal(moeh_image_load_gray(p, 64, out, &err), -ENOENT);
    snprintf(p, sizeof p, "%s/bad.jpg", g_dir);
    FILE *f = fopen(p, "wb");
    fputs("\xff\xd8\xff garbage", f);
    fclose(f);
    assert_int_equal(moeh_image_load_gray(p, 64, out, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "bad.jpg"));
    f = fopen(p, "wb");
    fputs("GIF89a", f);
    fclose(f);
    assert_int_equal(moeh_image_load_gray(p, 64, out, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "neither JPEG nor PNG"));
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_resize),
               cmocka_unit_test(test_real_png_and_jpeg), cmocka_unit_test(test_errors))
