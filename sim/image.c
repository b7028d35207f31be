/* image.c - chest X-ray preprocessing: JPEG (TurboJPEG, DCT-scaled) or PNG (libpng) to a
 * centre-cropped, box-filtered S x S grayscale image (see moeh_extract.h). */
#include "moeh_extract.h"

#include <png.h>
#include <string.h>
#include <turbojpeg.h>

void moeh_image_resize_gray(uint8_t *out, size_t S, const uint8_t *src, size_t w, size_t h)
{
    size_t side = w < h ? w : h, x0 = (w - side) / 2, y0 = (h - side) / 2;
    for (size_t oy = 0; oy < S; oy++) {
        size_t ya = y0 + oy * side / S, yb = y0 + (oy + 1) * side / S;
        if (yb == ya) yb = ya + 1;
        for (size_t ox = 0; ox < S; ox++) {
            size_t xa = x0 + ox * side / S, xb = x0 + (ox + 1) * side / S;
            if (xb == xa) xb = xa + 1;
            uint64_t sum = 0;
            for (size_t y = ya; y < yb; y++)
                for (size_t x = xa; x < xb; x++)
                    sum += src[y * w + x];
            uint64_t cnt = (uint64_t)(yb - ya) * (xb - xa);
            out[oy * S + ox] = (uint8_t)((sum + cnt / 2) / cnt);
        }
    }
}

static int decode_jpeg(const char *path, const unsigned char *buf, size_t len, size_t S,
                       uint8_t *out, moeh_err_t *err)
{
    int rc = -EBADMSG, w, h, sub, cs;
    uint8_t *pix = NULL;
    tjhandle tj = tjInitDecompress();
    if (!tj) return moeh_errf(err, -ENOMEM, "%s: cannot start the JPEG decoder", path);
    if (tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &sub, &cs) != 0 || w <= 0 ||
        h <= 0) {
        moeh_errf(err, rc, "%s: not a readable JPEG (%s)", path, tjGetErrorStr2(tj));
        goto out;
    }
    /* the smallest DCT scaling whose shorter side is still >= S */
    int nsf = 0, sw = w, sh = h;
    tjscalingfactor *sf = tjGetScalingFactors(&nsf);
    int min_side = w < h ? w : h;
    for (int i = 0; i < nsf; i++) {
        int s = TJSCALED(min_side, sf[i]);
        if (sf[i].num <= sf[i].denom && s >= (int)S &&
            TJSCALED(w, sf[i]) * TJSCALED(h, sf[i]) < sw * sh)
            sw = TJSCALED(w, sf[i]), sh = TJSCALED(h, sf[i]);
    }
    if (!(pix = malloc((size_t)sw * (size_t)sh))) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (tjDecompress2(tj, buf, (unsigned long)len, pix, sw, sw, sh, TJPF_GRAY, 0) != 0 &&
        tjGetErrorCode(tj) == TJERR_FATAL) {
        moeh_errf(err, rc, "%s: JPEG decoding failed (%s)", path, tjGetErrorStr2(tj));
        goto out;
    }
    moeh_image_resize_gray(out, S, pix, (size_t)sw, (size_t)sh);
    rc = 0;
out:
    free(pix);
    tjDestroy(tj);
    return rc;
}

static int decode_png(const char *path, const unsigned char *buf, size_t len, size_t S,
                      uint8_t *out, moeh_err_t *err)
{
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&im, buf, len))
        return moeh_errf(err, -EBADMSG, "%s: not a readable PNG (%s)", path, im.message);
    im.format = PNG_FORMAT_GRAY;
    uint8_t *pix = malloc(PNG_IMAGE_SIZE(im));
    if (!pix) {
        png_image_free(&im);
        return moeh_errf(err, -ENOMEM, "%s: out of memory", path);
    }
    if (!png_image_finish_read(&im, NULL, pix, 0, NULL)) {
        free(pix);
        return moeh_errf(err, -EBADMSG, "%s: PNG decoding failed (%s)", path, im.message);
    }
    moeh_image_resize_gray(out, S, pix, im.width, im.height);
    free(pix);
    return 0;
}

int moeh_image_load_gray(const char *path, size_t S, uint8_t *out, moeh_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = moeh_file_read_all(path, (size_t)256 << 20, &buf, &len, err);
    if (rc) return rc;
    const unsigned char *u = (const unsigned char *)buf;
    if (len >= 3 && u[0] == 0xff && u[1] == 0xd8 && u[2] == 0xff)
        rc = decode_jpeg(path, u, len, S, out, err);
    else if (len >= 8 && !memcmp(u, "\x89PNG\r\n\x1a\n", 8))
        rc = decode_png(path, u, len, S, out, err);
    else
        rc = moeh_errf(err, -EBADMSG, "%s: neither JPEG nor PNG", path);
    free(buf);
    return rc;
}
