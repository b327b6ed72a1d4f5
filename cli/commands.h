/*
 * cli/commands.h: the subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand) and returns an ad_status; main() prints the
 * message and turns it into the exit code (0, 1 job failed, 2 bad input).
 */
#ifndef AD_COMMANDS_H
#define AD_COMMANDS_H

#include "../common/ad.h"

ad_status ad_cmd_compile(int argc, char **argv);  /* compiler/compile.c */
ad_status ad_cmd_infer(int argc, char **argv);    /* compiler/infer.c */
ad_status ad_cmd_inspect(int argc, char **argv);  /* compiler/inspect.c */
ad_status ad_cmd_run(int argc, char **argv);      /* runtime/launcher.c */
/* Hidden: one worker process of a job, started by `run` through mpirun. */
ad_status ad_cmd_worker(int argc, char **argv);   /* runtime/worker.c */
/* Hidden: `__rsh HOST WORD...`, the remote-shell agent `run` gives mpirun.
 * On AD_OK, *exit_code is the remote command's exit code (main exits with
 * it); otherwise main prints the message and exits 1 or 2 as usual. */
ad_status ad_cmd_rsh(int argc, char **argv, int *exit_code); /* runtime/rsh.c */

#endif
