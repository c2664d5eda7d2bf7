/* SimpleNet: the two-layer classifier of the PyTorch essay (Linear 784->128, ReLU, Linear 128->10)
 * written with braid's C API, trained on a synthetic 10-class task made here from a fixed seed:
 * each class is a random 784-d prototype, each example its prototype plus noise that hides it
 * well (prototype values ~N(0, 0.1^2), noise ~N(0, 1)).
 *
 *   ./simplenet [--optimizer adamw|sgd] [--steps N]
 *
 * Prints the loss as it falls and the final train accuracy; exits 0 only if the loss fell to less
 * than half its first value. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/nn.h"
#include "core/optim.h"
#include "core/runtime.h"

enum { N_FEATURES = 784, N_HIDDEN = 128, N_CLASSES = 10, N_EXAMPLES = 2048, BATCH = 64 };

struct SimpleNet {
    struct nn_module *module; /* the root: named_parameters, train/eval, free */
    struct nn_linear *fc1, *fc2;
};

static struct SimpleNet simplenet_create(struct bt_rng *rng) {
    struct SimpleNet net = {.module = nn_module_create("simplenet")};
    net.fc1 = nn_linear_create("fc1", N_FEATURES, N_HIDDEN, true, rng);
    net.fc2 = nn_linear_create("fc2", N_HIDDEN, N_CLASSES, true, rng);
    nn_module_add_child(net.module, &net.fc1->base);
    nn_module_add_child(net.module, &net.fc2->base);
    return net;
}

/* x (B, 784) -> logits (B, 10) */
static bt_tensor *simplenet_forward(struct SimpleNet *net, bt_tensor *x) {
    bt_tensor *h = bt_relu(nn_linear_forward(net->fc1, x));
    return nn_linear_forward(net->fc2, h);
}

/* The data set, persistent: images (N, 784) float32, labels (N) int64. */
struct dataset {
    bt_tensor *images, *labels;
};

static struct dataset make_dataset(uint64_t seed) {
    struct bt_rng rng = bt_rng_make(seed);
    bt_tensor *prototypes = bt_randn(BT_SHAPE(N_CLASSES, N_FEATURES), &rng);
    struct dataset d = {bt_tensor_new(BT_SHAPE(N_EXAMPLES, N_FEATURES), BT_F32, bt_cpu()),
                        bt_tensor_new(BT_SHAPE(N_EXAMPLES), BT_I64, bt_cpu())};
    bt_fill_normal(d.images, &rng, 0.0f, 1.0f); /* the noise */
    float *x = bt_f32(d.images);
    int64_t *y = bt_data(d.labels);
    for (int64_t n = 0; n < N_EXAMPLES; n++) {
        y[n] = n % N_CLASSES;
        for (int64_t k = 0; k < N_FEATURES; k++)
            x[n * N_FEATURES + k] += 0.1f * (float)bt_get(prototypes, y[n] * N_FEATURES + k);
    }
    bt_step_end(); /* prototypes were a step tensor */
    return d;
}

static double accuracy(struct SimpleNet *net, const struct dataset *d) {
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *logits = simplenet_forward(net, d->images);
    int64_t correct = 0;
    for (int64_t n = 0; logits && n < N_EXAMPLES; n++) {
        int64_t best = 0;
        for (int64_t c = 1; c < N_CLASSES; c++)
            if (bt_get(logits, n * N_CLASSES + c) > bt_get(logits, n * N_CLASSES + best)) best = c;
        correct += best == bt_get(d->labels, n);
    }
    bt_set_grad_enabled(grad_mode);
    bt_step_end();
    return (double)correct / N_EXAMPLES;
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "simplenet: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see simplenet --help)\n");
    return 2;
}

int main(int argc, char **argv) {
    optim_kind kind = OPTIM_ADAMW;
    long steps = 300;
    for (int i = 1; i < argc; i++) {
        bool takes_value = strcmp(argv[i], "--optimizer") == 0 || strcmp(argv[i], "--steps") == 0;
        if (takes_value && i + 1 == argc) return usage_error("option '%s' needs a value", argv[i]);
        if (strcmp(argv[i], "--help") == 0) {
            printf("usage: simplenet [--optimizer adamw|sgd] [--steps N]\n"
                   "Trains Linear(784,128)-ReLU-Linear(128,10) on a synthetic 10-class task.\n");
            return 0;
        } else if (strcmp(argv[i], "--optimizer") == 0) {
            if (!optim_kind_parse(argv[++i], &kind))
                return usage_error("unknown optimizer '%s', expected adamw or sgd", argv[i]);
        } else if (strcmp(argv[i], "--steps") == 0) {
            char *end;
            steps = strtol(argv[++i], &end, 10);
            if (*end || steps < 1 || steps > 1000000)
                return usage_error("--steps must be an integer from 1 to 1000000, got '%s'",
                                   argv[i]);
        } else {
            return usage_error("unknown option '%s'", argv[i]);
        }
    }

    struct bt_rng init_rng = bt_rng_make(42);
    struct SimpleNet net = simplenet_create(&init_rng);
    struct dataset data = make_dataset(1234);
    struct nn_param_list params;
    nn_named_parameters(net.module, &params);
    struct optim_config cfg = optim_config_default(kind);
    if (kind == OPTIM_SGD) cfg.momentum = 0.9;
    struct optim *opt = optim_create(&cfg, &params);
    double lr = kind == OPTIM_SGD ? 0.01 : 1e-3;
    printf("simplenet: %lld parameters, %s, lr %g, %ld steps of batch %d\n",
           (long long)nn_num_parameters(net.module), kind == OPTIM_SGD ? "sgd" : "adamw", lr, steps,
           BATCH);

    double first_loss = 0.0, loss_value = 0.0;
    for (long step = 0; step < steps; step++) {
        int64_t start = (step * BATCH) % N_EXAMPLES;
        bt_tensor *x = bt_narrow(data.images, 0, start, BATCH);
        bt_tensor *y = bt_narrow(data.labels, 0, start, BATCH);

        optim_zero_grad(opt);
        bt_tensor *loss = bt_cross_entropy(simplenet_forward(&net, x), y);
        if (!loss || bt_backward(loss) != BT_OK || optim_step(opt, lr) != BT_OK) {
            fprintf(stderr, "simplenet: error: %s\n", bt_last_error());
            return 1;
        }
        loss_value = bt_item(loss);
        if (step == 0) first_loss = loss_value;
        if (step % 25 == 0 || step == steps - 1) printf("step %4ld  loss %.4f\n", step, loss_value);
        bt_step_end();
    }
    printf("train accuracy %.1f%%\n", 100.0 * accuracy(&net, &data));

    optim_free(opt);
    nn_param_list_free(&params);
    nn_module_free(net.module);
    bt_tensor_free(data.images);
    bt_tensor_free(data.labels);
    bt_runtime_shutdown();
    if (!(loss_value < 0.5 * first_loss)) {
        fprintf(stderr, "simplenet: error: loss did not fall by half (%.4f -> %.4f)\n", first_loss,
                loss_value);
        return 1;
    }
    return 0;
}
