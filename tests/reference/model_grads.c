/* Driver of the PyTorch reference test (compare_models.sh): builds a braid model from the command
 * line, loads its weights from WEIGHTS.h5 (/model/<name>, float32, braid's names) with the
 * checkpoint reader, runs forward and backward on the batch of REF.h5 (/idx, /targets (B,T) int64)
 * and writes /loss (float64) and /grads/<name> (float32) to OUT.h5 for models_ref.py --compare. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/runtime.h"
#include "data/checkpoint.h"
#include "models/model.h"

static const char usage[] =
    "usage: model_grads --arch gpt|llama --vocab-size N --block-size N --n-layer N --n-head N\n"
    "         --n-kv-head N --n-embd N --ffn-hidden N --bias 0|1 --gelu tanh|exact --tie 0|1\n"
    "         --norm-eps X --rope-theta X WEIGHTS.h5 REF.h5 OUT.h5\n";

/* Every HDF5 call goes through H5_FAILED: a negative return prints the call and where, once. */
static int h5_failed(long long rc, const char *call, const char *file, int line) {
    if (rc >= 0) return 0;
    fprintf(stderr, "model_grads: error: HDF5 call failed: %s (%s:%d)\n", call, file, line);
    return 1;
}
#define H5_FAILED(call) h5_failed((long long)(call), #call, __FILE__, __LINE__)

static int fail(const char *what) {
    fprintf(stderr, "model_grads: error: %s\n", what);
    return 1;
}

/* ---- command line ---- */

static int parse_args(int argc, char **argv, struct model_config *c, const char **paths) {
    *c = (struct model_config){.arch = MODEL_GPT, .gelu = BT_GELU_TANH};
    int n_paths = 0;
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k];
        if (strncmp(a, "--", 2) != 0) {
            if (n_paths == 3) return fail("more than three files given");
            paths[n_paths++] = a;
            continue;
        }
        if (k + 1 >= argc) {
            fprintf(stderr, "model_grads: error: %s needs a value\n%s", a, usage);
            return 1;
        }
        const char *v = argv[++k];
        if (strcmp(a, "--arch") == 0) {
            if (strcmp(v, "gpt") != 0 && strcmp(v, "llama") != 0) return fail("--arch: gpt|llama");
            c->arch = strcmp(v, "gpt") == 0 ? MODEL_GPT : MODEL_LLAMA;
        } else if (strcmp(a, "--gelu") == 0) {
            if (strcmp(v, "tanh") != 0 && strcmp(v, "exact") != 0)
                return fail("--gelu: tanh|exact");
            c->gelu = strcmp(v, "tanh") == 0 ? BT_GELU_TANH : BT_GELU_EXACT;
        } else if (strcmp(a, "--norm-eps") == 0) {
            c->norm_eps = atof(v);
        } else if (strcmp(a, "--rope-theta") == 0) {
            c->rope_theta = atof(v);
        } else {
            const char *names[] = {"--vocab-size", "--block-size", "--n-layer",   "--n-head",
                                   "--n-kv-head",  "--n-embd",     "--ffn-hidden"};
            int64_t *fields[] = {&c->vocab_size, &c->block_size, &c->n_layer,   &c->n_head,
                                 &c->n_kv_head,  &c->n_embd,     &c->ffn_hidden};
            int found = 0;
            for (int f = 0; f < 7 && !found; f++)
                if (strcmp(a, names[f]) == 0) {
                    *fields[f] = atoll(v);
                    found = 1;
                }
            if (strcmp(a, "--bias") == 0) c->bias = atoi(v) != 0, found = 1;
            if (strcmp(a, "--tie") == 0) c->tie_embeddings = atoi(v) != 0, found = 1;
            if (!found) {
                fprintf(stderr, "model_grads: error: unknown option %s\n%s", a, usage);
                return 1;
            }
        }
    }
    if (n_paths != 3) {
        fprintf(stderr, "model_grads: error: expected WEIGHTS.h5 REF.h5 OUT.h5\n%s", usage);
        return 1;
    }
    return 0;
}

/* ---- HDF5 ---- */

/* Reads dataset `name` of file f into dst (memory type `type`) after checking that its shape is
 * the ndim dims `dims`. */
static int read_dataset(hid_t f, const char *path, const char *name, hid_t type, int ndim,
                        const int64_t *dims, void *dst) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) {
        fprintf(stderr, "model_grads: error: %s: no dataset %s\n", path, name);
        return 1;
    }
    int rc = 1;
    hid_t space = H5Dget_space(d);
    if (H5_FAILED(space)) goto close_d;
    hsize_t file_dims[H5S_MAX_RANK];
    int n = H5Sget_simple_extent_dims(space, file_dims, NULL);
    if (H5_FAILED(n)) goto close_space;
    int same = n == ndim;
    for (int k = 0; same && k < n; k++)
        same = file_dims[k] == (hsize_t)dims[k];
    if (!same) {
        fprintf(stderr, "model_grads: error: %s: dataset %s has %d dims (", path, name, n);
        for (int k = 0; k < n; k++)
            fprintf(stderr, "%s%llu", k ? "," : "", (unsigned long long)file_dims[k]);
        fprintf(stderr, "), expected (");
        for (int k = 0; k < ndim; k++)
            fprintf(stderr, "%s%lld", k ? "," : "", (long long)dims[k]);
        fprintf(stderr, ")\n");
        goto close_space;
    }
    if (H5_FAILED(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst))) goto close_space;
    rc = 0;
close_space:
    H5Sclose(space);
close_d:
    H5Dclose(d);
    return rc;
}

/* /idx and /targets (B, T) int64 as step tensors */
static int load_batch(const char *path, int64_t *B, int64_t *T, bt_tensor **idx,
                      bt_tensor **targets) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "model_grads: error: cannot open %s\n", path);
        return 1;
    }
    int rc = 1;
    hid_t d = H5Dopen2(f, "/idx", H5P_DEFAULT);
    if (H5_FAILED(d)) goto close_f;
    hid_t space = H5Dget_space(d);
    hsize_t dims[H5S_MAX_RANK];
    int n = H5_FAILED(space) ? -1 : H5Sget_simple_extent_dims(space, dims, NULL);
    if (space >= 0) H5Sclose(space);
    H5Dclose(d);
    if (n != 2) {
        fprintf(stderr, "model_grads: error: %s: /idx must be 2-D (batch, time)\n", path);
        goto close_f;
    }
    *B = (int64_t)dims[0];
    *T = (int64_t)dims[1];
    *idx = bt_empty(BT_SHAPE(*B, *T), BT_I64, bt_cpu());
    *targets = bt_empty(BT_SHAPE(*B, *T), BT_I64, bt_cpu());
    if (!*idx || !*targets) goto close_f;
    if (read_dataset(f, path, "/idx", H5T_NATIVE_INT64, 2, (*idx)->shape, bt_data(*idx)) ||
        read_dataset(f, path, "/targets", H5T_NATIVE_INT64, 2, (*targets)->shape,
                     bt_data(*targets)))
        goto close_f;
    rc = 0;
close_f:
    H5Fclose(f);
    return rc;
}

static int write_dataset(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int ndim,
                         const int64_t *dims, const void *src) {
    hsize_t h5dims[H5S_MAX_RANK];
    for (int k = 0; k < ndim; k++)
        h5dims[k] = (hsize_t)dims[k];
    hid_t space = ndim ? H5Screate_simple(ndim, h5dims, NULL) : H5Screate(H5S_SCALAR);
    if (H5_FAILED(space)) return 1;
    int rc = 1;
    hid_t d = H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (!H5_FAILED(d)) {
        rc = H5_FAILED(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, src));
        H5Dclose(d);
    }
    H5Sclose(space);
    return rc;
}

/* /loss and /grads/<name> */
static int write_results(const char *path, double loss, const struct nn_param_list *params) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "model_grads: error: cannot create %s\n", path);
        return 1;
    }
    int rc = 1;
    if (write_dataset(f, "loss", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, NULL, &loss)) goto close_f;
    hid_t g = H5Gcreate2(f, "grads", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (H5_FAILED(g)) goto close_f;
    rc = 0;
    for (int64_t k = 0; k < params->count && rc == 0; k++) {
        const bt_tensor *p = params->tensors[k];
        if (!p->grad) {
            fprintf(stderr, "model_grads: error: %s received no gradient\n", params->names[k]);
            rc = 1;
            break;
        }
        rc = write_dataset(g, params->names[k], H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, p->ndim, p->shape,
                           bt_data(p->grad));
    }
    H5Gclose(g);
close_f:
    H5Fclose(f);
    return rc;
}

int main(int argc, char **argv) {
    struct model_config cfg;
    const char *paths[3];
    if (parse_args(argc, argv, &cfg, paths)) return 2;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* failures are reported once, by this driver */
    int rc = 1;
    int64_t B = 0, T = 0;
    bt_tensor *idx = NULL, *targets = NULL;
    struct nn_param_list params = {0};
    struct model *m = model_create(&cfg, 0);
    if (!m || model_parameters(m, &params) != BT_OK) {
        fprintf(stderr, "model_grads: error: %s\n", bt_last_error());
        goto done;
    }
    if (ckpt_load_model(paths[0], &params) != BT_OK) { /* /model/<name>, shapes checked */
        fprintf(stderr, "model_grads: error: %s\n", bt_last_error());
        goto done;
    }
    if (load_batch(paths[1], &B, &T, &idx, &targets)) goto done;
    model_train(m, false);
    bt_tensor *loss = model_forward(m, idx, targets, NULL);
    if (!loss || bt_backward(loss) != BT_OK) {
        fprintf(stderr, "model_grads: error: %s\n", bt_last_error());
        goto done;
    }
    double loss_value = bt_item(loss);
    printf("model_grads: %s B=%lld T=%lld: %lld parameters, loss %.8f\n",
           cfg.arch == MODEL_GPT ? "gpt" : "llama", (long long)B, (long long)T,
           (long long)model_num_parameters(m), loss_value);
    rc = write_results(paths[2], loss_value, &params);
done:
    nn_param_list_free(&params);
    model_free(m);
    bt_step_end();
    bt_runtime_shutdown();
    H5close();
    return rc;
}
