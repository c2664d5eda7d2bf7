/* The NCCL backend where braid is built without CUDA: no tensor is on a device, so none of this
 * runs; comm_use_device says why. BRAID_FAKE_CUDA's tensors (host memory) go over MPI, as in the
 * CUDA build (comm/nccl.c). */
#include "comm/comm_internal.h"
#include "core/cuda/cuda.h"

bool comm_is_device_tensor(const bt_tensor *t) {
    return t && t->storage->device.type != BT_DEVICE_CPU && !bt_fake_cuda();
}

bt_status comm_use_device(struct comm *c) {
    char where[COMM_WHERE_MAX];
    comm_where(c, "comm_use_device", where, sizeof where);
    if (c && bt_fake_cuda()) return BT_OK;
    return comm_errorf(where, "braid was built without the CUDA backend (no NCCL)");
}

bt_status comm_nccl_split(struct comm *parent, struct comm *child, int color, int key,
                          const char *where) {
    (void)parent, (void)child, (void)color, (void)key, (void)where;
    return BT_OK;
}

void comm_nccl_free(struct comm *c) {
    (void)c;
}

static bt_status absent(struct comm_request *r) {
    return comm_errorf(r->where, "device tensors need NCCL: braid was built without CUDA");
}

bt_status comm_nccl_allreduce(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, comm_op op) {
    (void)c, (void)buf, (void)n, (void)dtype, (void)op;
    return absent(r);
}
bt_status comm_nccl_reduce_scatter(struct comm_request *r, struct comm *c, const void *in,
                                   void *out, int64_t n, bt_dtype dtype, comm_op op) {
    (void)c, (void)in, (void)out, (void)n, (void)dtype, (void)op;
    return absent(r);
}
bt_status comm_nccl_reduce_scatter_v(struct comm_request *r, struct comm *c, const void *in,
                                     void *out, const int64_t *counts, bt_dtype dtype, comm_op op) {
    (void)c, (void)in, (void)out, (void)counts, (void)dtype, (void)op;
    return absent(r);
}
bt_status comm_nccl_allgather(struct comm_request *r, struct comm *c, const void *in, void *out,
                              int64_t n, bt_dtype dtype) {
    (void)c, (void)in, (void)out, (void)n, (void)dtype;
    return absent(r);
}
bt_status comm_nccl_allgather_v(struct comm_request *r, struct comm *c, void *buf,
                                const int64_t *counts, bt_dtype dtype) {
    (void)c, (void)buf, (void)counts, (void)dtype;
    return absent(r);
}
bt_status comm_nccl_broadcast(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, int root) {
    (void)c, (void)buf, (void)n, (void)dtype, (void)root;
    return absent(r);
}
bt_status comm_nccl_send(struct comm_request *r, struct comm *c, const void *buf, int64_t n,
                         bt_dtype dtype, int peer) {
    (void)c, (void)buf, (void)n, (void)dtype, (void)peer;
    return absent(r);
}
bt_status comm_nccl_recv(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                         bt_dtype dtype, int peer) {
    (void)c, (void)buf, (void)n, (void)dtype, (void)peer;
    return absent(r);
}
bool comm_nccl_poll(struct comm_request *r) {
    (void)r;
    return true;
}
void comm_nccl_release(struct comm_request *r) {
    (void)r;
}
