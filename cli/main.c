/*
 * cli/main.c: `autodist` entry point. Parses only the subcommand and hands the
 * rest to the module that implements it; the only place that exits.
 */
#include "commands.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: autodist COMMAND [ARGS]\n"
    "\n"
    "  compile MODEL.onnx [-r SPEC.yml] [-t TRAIN.yml] [-s STRATEGY] [-o PLAN_DIR] [--explain]\n"
    "          [--infer [--batch N]]\n"
    "  run PLAN_DIR [--data NAME=FILE.npy]... [--steps N | --epochs N] [--metrics FILE.jsonl]\n"
    "               [--save OUT.onnx] [--out NAME=FILE.npy]... [--shuffle SEED]\n"
    "  infer MODEL.onnx --data NAME=FILE.npy... --out NAME=FILE.npy...\n"
    "  inspect MODEL.onnx [--batch N] | inspect --ops\n"
    "  --version | --help | COMMAND --help\n"
    "\n"
    "Exit codes: 0 success, 1 the job failed while running, 2 bad input or usage.\n";

static const struct {
  const char *name;
  ad_status (*fn)(int, char **);
} commands[] = {
    {"compile", ad_cmd_compile}, {"run", ad_cmd_run},         {"infer", ad_cmd_infer},
    {"inspect", ad_cmd_inspect}, {"__worker", ad_cmd_worker},
};

static void print_error(void) {
  const char *msg = ad_error_message();
  fprintf(stderr, "%s%s\n", strncmp(msg, "autodist", 8) ? "autodist: " : "", msg);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("autodist %s\n", AD_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    if (strcmp(argv[1], commands[i].name))
      continue;
    ad_status st = commands[i].fn(argc - 1, argv + 1);
    if (st != AD_OK)
      print_error();
    return ad_status_exit_code(st);
  }
  /* The remote-shell agent exits with the remote command's exit code. */
  if (!strcmp(argv[1], "__rsh")) {
    int code = 0;
    ad_status st = ad_cmd_rsh(argc - 1, argv + 1, &code);
    if (st != AD_OK)
      print_error();
    return st == AD_OK ? code : ad_status_exit_code(st);
  }
  fprintf(stderr, "autodist: error: unknown command '%s'\n\n%s", argv[1], usage);
  return 2;
}
