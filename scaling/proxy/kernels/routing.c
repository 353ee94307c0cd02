/* Softmax top-k routing of the MoE proxy, forward and backward, one pass over the logits.
 *
 * Eager PyTorch spends about a dozen small kernels on this (softmax, topk, renormalisation,
 * the balance loss's counts and means, logsumexp, a stable argsort, a gather), and on the 2-core
 * CPU they cost about 4 ms per MoE layer and training step; this file does the same work in
 * about 0.7 ms for 4,096 tokens and 8 experts (plain scalar code: there is room left). It is
 * single-threaded on purpose: the work is small, and a second OpenMP
 * runtime beside torch's would fight it for the cores. scaling/routing.py holds the same
 * computation in torch ops, which the tests compare against this one.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_EXPERTS 256

/* logits [n, e] (float32, row-major) -> probabilities [n, e], logsumexp [n], top-k weights
 * [n, k] (renormalised to sum to one when renorm) and experts [n, k], the count of pairs per
 * expert [e], the (token, slot) pairs sorted stably by expert, as pair index (order [n*k]), token
 * (token_of_pair [n*k]) and weight (sorted_weights [n*k]), and each pair's place in that order
 * (position_of_pair [n*k], the inverse of order); losses[0] is the Switch/GShard
 * balance loss and losses[1] the z-loss. Ties go to the lower expert index, as in torch.topk.
 * Returns 0, or -1 when e is out of range. */
int moeplan_route_forward(const float *logits, int64_t n, int64_t e, int64_t k, int renorm,
                          float *probabilities, float *logsumexp, float *weights, int64_t *experts,
                          int64_t *counts, int64_t *order, int64_t *token_of_pair,
                          float *sorted_weights, int64_t *position_of_pair, double *losses) {
    double probability_sum[MAX_EXPERTS];
    int64_t next_slot[MAX_EXPERTS];
    double z_sum = 0.0;
    if (e < 1 || e > MAX_EXPERTS || k < 1 || k > e) return -1;
    memset(probability_sum, 0, sizeof(double) * e);
    memset(counts, 0, sizeof(int64_t) * e);
    for (int64_t t = 0; t < n; t++) {
        const float *row = logits + t * e;
        float *p = probabilities + t * e;
        float *w = weights + t * k;
        int64_t *chosen = experts + t * k;
        float largest = row[0], total = 0.0f, chosen_total = 0.0f;
        for (int64_t j = 1; j < e; j++) largest = row[j] > largest ? row[j] : largest;
        for (int64_t j = 0; j < e; j++) {
            p[j] = expf(row[j] - largest);
            total += p[j];
        }
        for (int64_t j = 0; j < e; j++) {
            p[j] /= total;
            probability_sum[j] += p[j];
        }
        logsumexp[t] = largest + logf(total);
        z_sum += (double)logsumexp[t] * logsumexp[t];
        for (int64_t slot = 0; slot < k; slot++) {
            int64_t best = -1;
            for (int64_t j = 0; j < e; j++) {
                int taken = 0;
                for (int64_t earlier = 0; earlier < slot; earlier++) taken |= chosen[earlier] == j;
                if (!taken && (best < 0 || p[j] > p[best])) best = j;
            }
            chosen[slot] = best;
            w[slot] = p[best];
            chosen_total += p[best];
            counts[best]++;
        }
        if (renorm)
            for (int64_t slot = 0; slot < k; slot++) w[slot] /= chosen_total;
    }
    double balance = 0.0;
    for (int64_t j = 0; j < e; j++)
        balance += ((double)counts[j] / (double)(n * k)) * (probability_sum[j] / (double)n);
    losses[0] = balance * (double)e;
    losses[1] = n ? z_sum / (double)n : 0.0;
    /* counting sort of the pairs by expert; pairs are visited in order, so it is stable */
    next_slot[0] = 0;
    for (int64_t j = 1; j < e; j++) next_slot[j] = next_slot[j - 1] + counts[j - 1];
    for (int64_t pair = 0; pair < n * k; pair++) {
        int64_t slot = next_slot[experts[pair]]++;
        order[slot] = pair;
        position_of_pair[pair] = slot;
        token_of_pair[slot] = pair / k;
        sorted_weights[slot] = weights[pair];
    }
    return 0;
}

/* Gradient of the logits [n, e] from the gradient of the weights in sorted pair order
 * (grad_sorted [n*k]) and the gradients of the two losses. grad_pair [n*k] is scratch. */
int moeplan_route_backward(const float *probabilities, const float *logsumexp,
                           const float *weights, const int64_t *experts, const int64_t *counts,
                           const int64_t *order, const float *grad_sorted, double grad_balance,
                           double grad_z, int64_t n, int64_t e, int64_t k, int renorm,
                           float *grad_pair, float *grad_logits) {
    float balance[MAX_EXPERTS];
    if (e < 1 || e > MAX_EXPERTS || k < 1 || k > e || n < 1) return -1;
    /* d balance / d p[t, j] = E * fraction_j / n, the same for every token */
    for (int64_t j = 0; j < e; j++)
        balance[j] = (float)(grad_balance * (double)e * ((double)counts[j] / (double)(n * k)) / (double)n);
    for (int64_t slot = 0; slot < n * k; slot++) grad_pair[order[slot]] = grad_sorted[slot];
    const float z_scale = (float)(2.0 * grad_z / (double)n); /* d z / d lse[t] */
    for (int64_t t = 0; t < n; t++) {
        const float *p = probabilities + t * e;
        const float *w = weights + t * k;
        const int64_t *chosen = experts + t * k;
        const float *g_w = grad_pair + t * k;
        float *g = grad_logits + t * e; /* first d loss / d p, then d loss / d logits */
        for (int64_t j = 0; j < e; j++) g[j] = balance[j];
        if (renorm) { /* w_i = p_i / S over the chosen: d w_i / d p_j = (delta_ij - w_i) / S */
            float chosen_total = 0.0f, weighted = 0.0f;
            for (int64_t slot = 0; slot < k; slot++) {
                chosen_total += p[chosen[slot]];
                weighted += g_w[slot] * w[slot];
            }
            for (int64_t slot = 0; slot < k; slot++) g[chosen[slot]] += (g_w[slot] - weighted) / chosen_total;
        } else {
            for (int64_t slot = 0; slot < k; slot++) g[chosen[slot]] += g_w[slot];
        }
        /* softmax: d logits_j = p_j (g_j - sum_i p_i g_i); d lse / d logits_j = p_j */
        float dot = 0.0f;
        for (int64_t j = 0; j < e; j++) dot += p[j] * g[j];
        const float shift = z_scale * logsumexp[t] - dot;
        for (int64_t j = 0; j < e; j++) g[j] = p[j] * (g[j] + shift);
    }
    return 0;
}
