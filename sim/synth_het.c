/* synth_het.c - the heterogeneous profile (see synth_het.h; docs/synthetic.md states each
 * effect and its reason, and was written before this code). */
#include "synth_het.h"

#include <math.h>

const char het_kind_letter[HET_N_KINDS] = {'R', 'S', 'C'};

/* case mix R / S / C per hospital */
static const double k_mix[HET_N_HOSP][HET_N_KINDS] = {
    {0.40, 0.30, 0.30}, {0.20, 0.60, 0.20}, {0.20, 0.20, 0.60}, {0.60, 0.20, 0.20}};
static const double k_hosp_p[HET_N_HOSP] = {0.30, 0.25, 0.25, 0.20};
/* the kinds' latent means: s, h, k, n, m */
static const double k_shift[HET_N_KINDS][5] = {
    {0, 0, 0, 0, 0.8}, {0, 0, 0.5, 0, 0}, {0, 0.8, 0, 0, 0}};
/* weights per kind and task: bias, s, h, k, n, m, a */
static const double k_w[HET_N_KINDS][3][7] = {
    {{-2.4, 0.6, 0.1, 0.2, 0.4, 1.6, 0.3},
     {-0.3, 0.5, 0.1, 0.2, 0.2, 1.3, 0},
     {-1.8, 0.2, 0, 0.1, 1.0, 0.6, 0}},
    {{-2.6, 0.6, 0.3, 1.5, 0.2, 0.1, 0.3},
     {-0.3, 0.5, 0.2, 1.4, 0.1, 0.1, 0},
     {-1.8, 0.2, 0, 0.9, 0.3, 0.1, 0}},
    {{-2.4, 0.6, 1.5, 0.2, 0.3, 0.2, 0.3},
     {-0.3, 0.5, 1.2, 0.3, 0.1, 0.2, 0},
     {-1.8, 0.2, 0.8, 0.2, 0.6, 0, 0}},
};

static double sigm(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static int draw(moeh_rng_t *r, const double *p, int n)
{
    double u = moeh_rng_uniform(r), c = 0;
    for (int i = 0; i < n - 1; i++)
        if (u < (c += p[i])) return i;
    return n - 1;
}

static int any_of(moeh_rng_t *r, int n)
{
    return (int)(moeh_rng_uniform(r) * n) % n;
}

int het_hospital(moeh_rng_t *r)
{
    return draw(r, k_hosp_p, HET_N_HOSP);
}

void het_admission(moeh_rng_t *r, int hospital, het_adm_t *a, double z[5])
{
    a->hospital = hospital;
    a->kind = draw(r, k_mix[hospital], HET_N_KINDS);
    for (int i = 0; i < 5; i++)
        z[i] += k_shift[a->kind][i];
    /* units: 0 MICU, 1 SICU, 2 MICU/SICU, 3 CVICU, 4 CCU, 5 TSICU */
    static const int own[HET_N_KINDS][2] = {{0, 0}, {1, 5}, {3, 4}};
    bool typical = moeh_rng_uniform(r) < 0.7;
    int pick2 = any_of(r, 2);
    a->unit = typical ? own[a->kind][pick2] : any_of(r, 6);
    /* types: 0 EW EMER., 1 URGENT, 2 ELECTIVE, 3 OBSERVATION ADMIT, 4 SURGICAL SAME DAY, 5 DIRECT
     */
    static const int elective[2] = {2, 4}, emergency[3] = {0, 1, 5};
    double u = moeh_rng_uniform(r);
    int j = any_of(r, 6);
    if (a->kind == 1)
        a->type = u < 0.6 ? elective[j % 2] : j;
    else
        a->type = u < 0.9 ? emergency[j % 3] : j;
}

void het_risk(int kind, const double z[5], double age, double risk[3])
{
    double a = (age - 65.0) / 15.0;
    for (int t = 0; t < 3; t++) {
        const double *w = k_w[kind][t];
        risk[t] = sigm(w[0] + w[1] * z[0] + w[2] * z[1] + w[3] * z[2] + w[4] * z[3] + w[5] * z[4] +
                       w[6] * a);
    }
}

void het_limited_risk(int kind, const double z[5], double age, bool notes, bool cxr, double risk[3])
{
    double y[5] = {z[0], z[1], z[2], z[3], z[4]};
    if (!notes) y[3] = k_shift[kind][3];
    if (!cxr) y[4] = k_shift[kind][4];
    het_risk(kind, y, age, risk);
}

double het_p_cxr(const het_adm_t *a, const double z[5])
{
    static const double b_kind[HET_N_KINDS] = {1.4, -0.6, 0.3};
    double b_unit = (a->unit == 0 ? 0.4 : 0) + (a->type == 2 || a->type == 4 ? -0.4 : 0);
    return sigm(-1.6 + 0.5 * z[0] + 1.2 * z[4] + b_kind[a->kind] + b_unit);
}

double het_p_note(bool cxr, const double z[5])
{
    return cxr ? 0.85 : sigm(-2.2 + 1.2 * z[3]);
}

double het_chart_offset(int hospital)
{
    return hospital == 1 ? -1.0 : hospital == 2 ? 0.8 : 0.0;
}
