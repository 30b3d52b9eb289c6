/*
 * The C ABI's contract, checked from C: NULLs and bad constants are
 * refused with a reason, handles are cleared on failure, accessors are safe
 * out of range, a model runs only with the guard that admitted it, the last
 * error is per thread, and two threads classify with one guard at once.
 * Run under AddressSanitizer by embed/tests/abi/c.rs.
 *
 *   contract DATA_DIR OTHER_DATA_DIR POLICY.toml MODEL_DIR OTHER_POLICY.toml
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "medguard.h"

static int failures = 0;

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      const char *e = medguard_last_error();                              \
      printf("FAILED line %d: %s (last error: %s)\n", __LINE__, #cond,    \
             e ? e : "none");                                             \
      failures++;                                                         \
    }                                                                     \
  } while (0)

static int error_mentions(const char *text) {
  const char *e = medguard_last_error();
  return e != NULL && strstr(e, text) != NULL;
}

struct worker {
  const medguard_guard *guard;
  const medguard_model *model;
  int ok;
};

/* Classifies a flat gray image twice, and checks that this thread's last
 * error is its own. */
static void *classify_in_thread(void *arg) {
  struct worker *w = arg;
  unsigned char pixels[28 * 28];
  memset(pixels, 100, sizeof pixels);
  medguard_options options = {1, 5, MEDGUARD_POLICY_FLAG_ONLY};
  w->ok = 1;
  for (int i = 0; i < 2; i++) {
    medguard_result *result = NULL;
    if (medguard_classify_pixels(w->guard, w->model, pixels, sizeof pixels, MEDGUARD_SAMPLES_U8,
                                 1, 28, 28, &options, &result) != MEDGUARD_OK ||
        medguard_result_count(result) != 1 || medguard_result_seed(result) != 5)
      w->ok = 0;
    medguard_result_free(result);
  }
  if (medguard_last_error() != NULL) w->ok = 0; /* another thread's errors are not ours */
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr,
            "usage: contract DATA_DIR OTHER_DATA_DIR POLICY.toml MODEL_DIR OTHER_POLICY.toml\n");
    return 2;
  }
  const char *data = argv[1], *other_data = argv[2], *policy = argv[3], *model_dir = argv[4],
             *other_policy = argv[5];

  CHECK(medguard_last_error() == NULL);
  CHECK(strlen(medguard_version()) > 0);

  /* Opening: a NULL policy, a missing one. The out handle is cleared. */
  medguard_guard *guard = (medguard_guard *)&failures; /* garbage the call must clear */
  CHECK(medguard_guard_open(data, NULL, &guard) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(guard == NULL);
  CHECK(error_mentions("trust_policy is NULL"));
  CHECK(medguard_guard_open(data, "/nonexistent/policy.toml", &guard) == MEDGUARD_ERROR);
  CHECK(error_mentions("/nonexistent/policy.toml"));
  CHECK(medguard_guard_open(data, policy, NULL) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(error_mentions("output pointer is NULL"));
  CHECK(medguard_guard_open(data, policy, &guard) == MEDGUARD_OK);
  CHECK(guard != NULL);

  /* Admission: NULLs, a directory that is not a signed model, then the model. */
  medguard_model *model = NULL;
  CHECK(medguard_admit(NULL, model_dir, &model) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(medguard_admit(guard, NULL, &model) == MEDGUARD_INVALID_ARGUMENT);

  CHECK(medguard_admit(guard, "/nonexistent-model", &model) == MEDGUARD_REFUSED);
  CHECK(model == NULL);
  CHECK(error_mentions("/nonexistent-model"));
  CHECK(medguard_admit(guard, model_dir, &model) == MEDGUARD_OK);
  CHECK(strcmp(medguard_model_name(model), "pneumonia-cnn") == 0);
  CHECK(strlen(medguard_model_sha256(model)) == 64);
  CHECK(strstr(medguard_model_receipt_json(model), "checkpoint") != NULL);
  uint32_t height = 0, width = 0;
  CHECK(medguard_model_input_size(model, &height, &width) >= 1);
  CHECK(height == 28 && width == 28);
  CHECK(medguard_model_name(NULL) == NULL);
  CHECK(medguard_model_input_size(NULL, NULL, NULL) == 0);
  CHECK(medguard_abi_version() == MEDGUARD_ABI_VERSION);
  CHECK(strlen(medguard_guard_ledger_key(guard)) > 0);
  CHECK(medguard_guard_ledger_key(NULL) == NULL);
  CHECK(medguard_model_prepare(NULL, model) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(medguard_model_prepare(guard, NULL) == MEDGUARD_INVALID_ARGUMENT);
  medguard_guard *scratch = NULL;
  CHECK(medguard_guard_open("", policy, &scratch) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(scratch == NULL);
  CHECK(error_mentions("data_dir is empty"));

  /* Classification arguments. */
  unsigned char pixels[2 * 28 * 28];
  for (size_t i = 0; i < sizeof pixels; i++) pixels[i] = (unsigned char)(i * 7);
  medguard_result *result = (medguard_result *)&failures;
  medguard_options bad_policy = {0, 0, 9};
  CHECK(medguard_classify_pixels(guard, model, pixels, 28 * 28, 7, 1, 28, 28, NULL, &result) ==
        MEDGUARD_INVALID_ARGUMENT);
  CHECK(result == NULL);
  CHECK(error_mentions("sample_type 7"));
  CHECK(medguard_classify_pixels(guard, model, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 &bad_policy, &result) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(medguard_classify_pixels(guard, model, NULL, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 NULL, &result) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(medguard_classify_pixels(guard, NULL, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 NULL, &result) == MEDGUARD_INVALID_ARGUMENT);
  /* Wrong size, wrong length: refused, with the reason. */
  CHECK(medguard_classify_pixels(guard, model, pixels, 27 * 27, MEDGUARD_SAMPLES_U8, 1, 27, 27,
                                 NULL, &result) == MEDGUARD_REFUSED);
  CHECK(error_mentions("the model takes 28x28"));
  CHECK(medguard_classify_pixels(guard, model, pixels, 100, MEDGUARD_SAMPLES_U8, 1, 28, 28, NULL,
                                 &result) == MEDGUARD_REFUSED);
  CHECK(error_mentions("100 bytes given"));
  /* Tensor values out of the manifest's range: the sandbox refuses them. */
  float values[28 * 28];
  for (int i = 0; i < 28 * 28; i++) values[i] = 2.0f;
  CHECK(medguard_classify_pixels(guard, model, (const uint8_t *)values, sizeof values,
                                 MEDGUARD_SAMPLES_F32, 1, 28, 28, NULL, &result) ==
        MEDGUARD_REFUSED);
  CHECK(result == NULL);
  /* Bytes that are no image. */
  CHECK(medguard_classify_file(guard, model, (const uint8_t *)"not an image", 12, NULL,
                               &result) == MEDGUARD_REFUSED);
  CHECK(error_mentions("not a PNG or .npy file"));
  CHECK(medguard_classify_file(guard, model, NULL, 0, NULL, &result) == MEDGUARD_REFUSED);

  /* No out pointer: refused before anything is admitted, screened or
   * recorded, so the ledger's next entry follows the last one. */
  medguard_options options = {1, 42, MEDGUARD_POLICY_ENFORCE};
  CHECK(medguard_classify_pixels(guard, model, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 &options, &result) == MEDGUARD_OK);
  uint64_t before = medguard_image_ledger_index(medguard_result_image(result, 0));
  medguard_result_free(result);
  CHECK(medguard_admit(guard, model_dir, NULL) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(medguard_classify_pixels(guard, model, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 &options, NULL) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(medguard_classify_file(guard, model, pixels, 28 * 28, &options, NULL) ==
        MEDGUARD_INVALID_ARGUMENT);

  /* Two images in one call; accessors out of range. */
  CHECK(medguard_classify_pixels(guard, model, pixels, sizeof pixels, MEDGUARD_SAMPLES_U8, 2, 28,
                                 28, &options, &result) == MEDGUARD_OK);
  CHECK(medguard_result_count(result) == 2);
  CHECK(medguard_result_seed(result) == 42);
  CHECK(medguard_result_image(result, 2) == NULL);
  const medguard_image_result *image = medguard_result_image(result, 0);
  CHECK(image != NULL);
  CHECK(medguard_image_class_label(image, 99) == NULL);
  CHECK(isnan(medguard_image_probability(image, 99)));
  CHECK(strstr(medguard_image_json(image), "\"seed\":42") != NULL);
  CHECK(strstr(medguard_image_receipt_json(image), "inclusion_proof") != NULL);
  CHECK(medguard_image_ledger_index(image) == before + 1);
  CHECK(medguard_image_ledger_index(medguard_result_image(result, 1)) == before + 2);
  if (medguard_image_label(image) != NULL) {
    /* Enforce: a label is never shown with a rejection. */
    CHECK(medguard_image_verdict(image) != MEDGUARD_VERDICT_REJECT);
    CHECK(medguard_image_class_count(image) == 2);
    float sum = medguard_image_probability(image, 0) + medguard_image_probability(image, 1);
    CHECK(fabsf(sum - 1.0f) < 1e-5f);
  } else {
    CHECK(medguard_image_verdict(image) == MEDGUARD_VERDICT_REJECT);
    CHECK(medguard_image_class_count(image) == 0);
  }
  medguard_result_free(result);
  /* NULL accessors: safe, and never an unscreened label. */
  CHECK(medguard_result_count(NULL) == 0);
  CHECK(medguard_result_image(NULL, 0) == NULL);
  CHECK(medguard_image_verdict(NULL) == MEDGUARD_VERDICT_REJECT);
  CHECK(medguard_image_label(NULL) == NULL);
  CHECK(isnan(medguard_image_p_value(NULL)));
  CHECK(medguard_image_json(NULL) == NULL);

  /* A model runs only with the guard that admitted it. */
  medguard_guard *other = NULL;
  CHECK(medguard_guard_open(other_data, policy, &other) == MEDGUARD_OK);
  CHECK(medguard_classify_pixels(other, model, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 NULL, &result) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(error_mentions("admitted by another guard"));
  CHECK(medguard_model_prepare(other, model) == MEDGUARD_INVALID_ARGUMENT);
  medguard_guard_free(other);

  /* Two threads, one guard, one model, at once. */
  struct worker workers[2] = {{guard, model, 0}, {guard, model, 0}};
  pthread_t threads[2];
  for (int i = 0; i < 2; i++)
    CHECK(pthread_create(&threads[i], NULL, classify_in_thread, &workers[i]) == 0);
  for (int i = 0; i < 2; i++) CHECK(pthread_join(threads[i], NULL) == 0);
  CHECK(workers[0].ok && workers[1].ok);

  /* A fork's copies are refused (shared ledger lock, no sandbox threads)
   * and their free functions leak rather than touch the parent's state. */
  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    medguard_result *r = NULL;
    int ok = medguard_classify_pixels(guard, model, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28,
                                      28, NULL, &r) == MEDGUARD_INVALID_ARGUMENT &&
             error_mentions("another process") && r == NULL &&
             medguard_model_prepare(guard, model) == MEDGUARD_INVALID_ARGUMENT;
    medguard_model_free(model);
    medguard_guard_free(guard);
    _exit(ok ? 0 : 1);
  }
  int child_status = -1;
  CHECK(child > 0 && waitpid(child, &child_status, 0) == child);
  CHECK(WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0);

  /* Freeing NULL does nothing; everything else is freed once. */
  medguard_result_free(NULL);
  medguard_model_free(NULL);
  medguard_guard_free(NULL);
  /* The same ledger under another policy is another guard: the model must
   * be admitted again under it. */
  medguard_guard_free(guard);
  CHECK(medguard_guard_open(data, other_policy, &guard) == MEDGUARD_OK);
  CHECK(medguard_classify_pixels(guard, model, pixels, 28 * 28, MEDGUARD_SAMPLES_U8, 1, 28, 28,
                                 NULL, &result) == MEDGUARD_INVALID_ARGUMENT);
  CHECK(error_mentions("admitted by another guard"));
  medguard_model_free(model);
  medguard_guard_free(guard);

  if (failures) {
    printf("contract: %d check(s) failed\n", failures);
    return 1;
  }
  printf("contract: all checks passed\n");
  return 0;
}
