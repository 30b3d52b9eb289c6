/*
 * Classifies images with medguard from C, the way a native PACS viewer
 * embeds it: open a guard, admit the signed model, screen and classify.
 *
 *   classify DATA_DIR POLICY.toml MODEL_DIR [--seed N] [--flag-only] FILE...
 *
 * A binary PGM (P5, 8- or 16-bit) stands in for a viewer's decoded frame
 * buffer: its pixels go to medguard_classify_pixels. Any other file (PNG,
 * .npy, DICOM) goes whole to medguard_classify_file, as `medguard predict`
 * reads it. Each image prints one line, FILE<TAB>JSON, the JSON being the
 * object `medguard predict --json` prints; a refused input prints
 * FILE<TAB>refused<TAB>REASON. Exit 0 when every image was accepted or
 * flagged, 1 when a model or input was refused or an image rejected, 2 on
 * an error, as the CLI.
 *
 * Build: cc classify.c -I../../include -L<target dir> -lmedguard_embed
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "medguard.h"

/* Reads a whole file; NULL (errno set) on failure. */
static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 1 << 16, n = 0;
  unsigned char *buf = malloc(cap);
  while (buf != NULL) {
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    unsigned char *bigger = realloc(buf, cap * 2);
    if (bigger == NULL) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = bigger;
    cap *= 2;
  }
  if (buf != NULL && ferror(f)) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = n;
  return buf;
}

/* A binary PGM's header: width, height, maxval; the offset of its pixels.
 * Returns 0 if `data` is not one. */
static int pgm_header(const unsigned char *data, size_t len, unsigned *width,
                      unsigned *height, unsigned *maxval, size_t *offset) {
  if (len < 2 || data[0] != 'P' || data[1] != '5') return 0;
  unsigned fields[3];
  size_t i = 2;
  for (int field = 0; field < 3; field++) {
    while (i < len && (data[i] == ' ' || data[i] == '\n' || data[i] == '\r' ||
                       data[i] == '\t' || data[i] == '#')) {
      if (data[i] == '#')
        while (i < len && data[i] != '\n') i++;
      else
        i++;
    }
    unsigned long value = 0;
    size_t start = i;
    while (i < len && data[i] >= '0' && data[i] <= '9' && value < 1000000)
      value = value * 10 + (unsigned long)(data[i++] - '0');
    if (i == start) return 0;
    fields[field] = (unsigned)value;
  }
  if (i >= len) return 0; /* one whitespace byte ends the header */
  *width = fields[0];
  *height = fields[1];
  *maxval = fields[2];
  *offset = i + 1;
  return 1;
}

/* Classifies one file; returns the exit status it calls for. */
static int classify_one(const medguard_guard *guard, const medguard_model *model,
                        const char *path, const medguard_options *options) {
  size_t len = 0;
  unsigned char *data = read_file(path, &len);
  if (data == NULL) {
    printf("%s\trefused\tcannot read it: %s\n", path, strerror(errno));
    return 1;
  }
  medguard_result *result = NULL;
  medguard_status status;
  unsigned width, height, maxval;
  size_t offset;
  if (pgm_header(data, len, &width, &height, &maxval, &offset)) {
    /* PGM samples are big-endian; medguard takes the host's order. */
    uint32_t type = maxval > 255 ? MEDGUARD_SAMPLES_U16 : MEDGUARD_SAMPLES_U8;
    size_t bytes = len - offset;
    unsigned char *pixels = data + offset;
    if (type == MEDGUARD_SAMPLES_U16) {
      for (size_t i = 0; i + 1 < bytes; i += 2) {
        uint16_t v = (uint16_t)(pixels[i] << 8 | pixels[i + 1]);
        memcpy(pixels + i, &v, 2);
      }
    }
    status = medguard_classify_pixels(guard, model, pixels, bytes, type, 1,
                                      height, width, options, &result);
  } else {
    status = medguard_classify_file(guard, model, data, len, options, &result);
  }
  free(data);
  if (status == MEDGUARD_REFUSED) {
    printf("%s\trefused\t%s\n", path, medguard_last_error());
    return 1;
  }
  if (status != MEDGUARD_OK) {
    fprintf(stderr, "classify: error: %s: %s\n", path, medguard_last_error());
    return 2;
  }
  int exit_status = 0;
  for (size_t i = 0; i < medguard_result_count(result); i++) {
    const medguard_image_result *image = medguard_result_image(result, i);
    if (medguard_image_verdict(image) == MEDGUARD_VERDICT_REJECT) exit_status = 1;
    printf("%s\t%s\n", path, medguard_image_json(image));
    /* What a viewer would show: the label only when there is one. */
    const char *label = medguard_image_label(image);
    fprintf(stderr, "%s: %s, p = %.4f", path, label ? label : "prediction withheld",
            medguard_image_p_value(image));
    for (size_t c = 0; c < medguard_image_class_count(image); c++)
      fprintf(stderr, ", %s %.3f", medguard_image_class_label(image, c),
              (double)medguard_image_probability(image, c));
    fprintf(stderr, " [ledger #%llu]\n",
            (unsigned long long)medguard_image_ledger_index(image));
  }
  medguard_result_free(result);
  return exit_status;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr,
            "usage: classify DATA_DIR POLICY.toml MODEL_DIR [--seed N] [--flag-only] FILE...\n");
    return 2;
  }
  medguard_options options = {0, 0, MEDGUARD_POLICY_ENFORCE};
  int first = 4;
  while (first < argc && strncmp(argv[first], "--", 2) == 0) {
    if (strcmp(argv[first], "--seed") == 0 && first + 1 < argc) {
      /* Only to reproduce an earlier verdict: a seed known in advance makes
       * the screening's noise draws predictable to an attacker. */
      char *end = NULL;
      errno = 0;
      options.fixed_seed = 1;
      options.seed = strtoull(argv[first + 1], &end, 10);
      if (errno != 0 || end == argv[first + 1] || *end != '\0' || argv[first + 1][0] == '-') {
        fprintf(stderr, "classify: --seed takes an unsigned 64-bit integer\n");
        return 2;
      }
      first += 2;
    } else if (strcmp(argv[first], "--flag-only") == 0) {
      options.policy = MEDGUARD_POLICY_FLAG_ONLY;
      first += 1;
    } else {
      fprintf(stderr, "classify: unknown option %s\n", argv[first]);
      return 2;
    }
  }

  medguard_guard *guard = NULL;
  if (medguard_guard_open(argv[1], argv[2], &guard) != MEDGUARD_OK) {
    fprintf(stderr, "classify: error: %s\n", medguard_last_error());
    return 2;
  }
  medguard_model *model = NULL;
  medguard_status status = medguard_admit(guard, argv[3], &model);
  if (status != MEDGUARD_OK) {
    fprintf(stderr, "classify: %s: %s\n", status == MEDGUARD_REFUSED ? "refused" : "error",
            medguard_last_error());
    medguard_guard_free(guard);
    return status == MEDGUARD_REFUSED ? 1 : 2;
  }
  fprintf(stderr, "admitted %s %s (sha256 %s), signed by %s\n", medguard_model_name(model),
          medguard_model_version(model), medguard_model_sha256(model),
          medguard_model_signer(model));
  /* Once per model: every classification then starts from a snapshot with
   * the model loaded. Without it the model still runs, loading each time. */
  if (medguard_model_prepare(guard, model) != MEDGUARD_OK)
    fprintf(stderr, "classify: note: %s\n", medguard_last_error());

  int exit_status = 0;
  for (int i = first; i < argc; i++) {
    int s = classify_one(guard, model, argv[i], &options);
    if (s > exit_status) exit_status = s;
    if (s == 2) break;
  }
  medguard_model_free(model);
  medguard_guard_free(guard);
  return exit_status;
}
