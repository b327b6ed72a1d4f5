/*
 * runtime/rsh.c: `autodist __rsh HOST WORD...`, the remote-shell agent that
 * `autodist run` gives mpirun (--mca plm_rsh_agent "autodist __rsh"), so that
 * mpirun reaches the other nodes through libssh with the plan's settings
 * instead of through an ssh binary and ~/.ssh/config.
 *
 * mpirun calls it like ssh: the words are a command line meant for the remote
 * shell and are joined with spaces, as ssh joins them. The plan (named by
 * $AD_PLAN_DIR) says how to reach HOST; on the node the agent runs, in the
 * login directory, python_venv (shell code by definition, AutoDist's
 * semantics), exports shared_envs (every value single-quoted, so it arrives
 * literally whatever it holds) and runs the words (remote_command below).
 *
 * The command's output goes to the agent's stdout and stderr as it comes, and
 * the agent exits with the command's exit code (128 + N when signal N killed
 * it). Its stdin is not forwarded (like `ssh -n`; mpirun gives /dev/null):
 * the command reads /dev/null, and the channel's stdin is a lifeline that
 * stops the remote command when the agent goes away, however it dies. On
 * SIGTERM, SIGHUP or SIGINT the signal is also forwarded (runtime/ssh.c).
 *
 * The agent's own failures are one line on stderr (printed by main): exit 2
 * for the configuration (no plan, a node not in it, a refused host key or
 * login), exit 1 when the node cannot be reached or the connection is lost.
 * $AD_ACCEPT_NEW_HOSTS=1 (set by `run --accept-new-hosts`) records unknown
 * host keys.
 */
#include "../cli/commands.h"
#include "plan.h"
#include "ssh.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The command's output, relayed as it comes. A reader that went away (EPIPE)
 * makes the rest of that stream go nowhere, as with ssh. */
static void relay(void *ctx, int fd, const char *buf, size_t n) {
  static bool closed[3];
  while (n > 0 && !closed[fd]) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      closed[fd] = true;
      break;
    }
    buf += w;
    n -= (size_t)w;
  }
}

/* The remote command (POSIX shell):
 *
 *   cd && {
 *   VENV
 *   } && export K='v'... && exec 3<&0 && {
 *   { WORDS
 *   } </dev/null 3<&- &
 *   ad_w=$!
 *   { cat; kill -TERM 0; } <&3 >/dev/null 2>&1 &
 *   wait $ad_w
 *   }
 *
 * python_venv and the words each stand on their own lines, so that a
 * trailing ';' or comment in them does no harm. The words run as the shell's
 * own command list, not behind `exec`: mpirun's line may be compound (for sh
 * and ksh it is "( test ! -r ./.profile || . ./.profile; ... orted ... )").
 *
 * The second job is the lifeline. It reads the channel's stdin (through fd
 * 3, since a background job's own stdin is /dev/null), which the agent never
 * writes nor closes, so it reaches EOF only when the agent's connection is
 * gone: the agent ended or was killed, even with SIGKILL. Then the session's
 * process group, the words included, gets SIGTERM. Without it nothing would
 * stop them: they have no terminal, and sshd refuses forwarded signals after
 * a root login (no privilege separation then). */
static char *remote_command(const ad_plan_node *nd, int n_words, char **words) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  AD_ASSERT(f);
  fputs("cd", f);
  if (nd->python_venv)
    fprintf(f, " && {\n%s\n}", nd->python_venv);
  if (nd->n_envs) {
    fputs(" && export", f);
    for (int i = 0; i < nd->n_envs; i++) {
      char *q = ad_shell_quote(nd->envs[i].value);
      fprintf(f, " %s=%s", nd->envs[i].key, q);
      free(q);
    }
  }
  fputs(" && exec 3<&0 && {\n{ ", f);
  for (int i = 0; i < n_words; i++)
    fprintf(f, "%s%s", i ? " " : "", words[i]);
  fputs(
      "\n} </dev/null 3<&- &\nad_w=$!\n{ cat; kill -TERM 0; } <&3 >/dev/null 2>&1 &\nwait $ad_w\n}",
      f);
  fclose(f);
  return buf;
}

static ad_status find_node(const ad_plan *plan, const char *host, const ad_plan_node **out) {
  for (int i = 0; i < plan->n_nodes; i++)
    if (!strcmp(plan->nodes[i].address, host)) {
      *out = &plan->nodes[i];
      if (!(*out)->ssh)
        return ad_fail(AD_ERR_INPUT,
                       "error: node '%s' has no ssh group in the plan %s/plan.yaml; the chief "
                       "runs its own workers",
                       host, plan->dir);
      return AD_OK;
    }
  char names[1024] = "";
  size_t used = 0;
  for (int i = 0; i < plan->n_nodes && used < sizeof names; i++)
    used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                             plan->nodes[i].address);
  return ad_fail(AD_ERR_INPUT, "error: node '%s' is not in the plan %s/plan.yaml (nodes: %s)", host,
                 plan->dir, names);
}

ad_status ad_cmd_rsh(int argc, char **argv, int *exit_code) {
  *exit_code = 2;
  if (argc < 3)
    return ad_fail(AD_ERR_INPUT,
                   "error: usage: autodist __rsh HOST COMMAND... (the remote-shell agent that "
                   "`autodist run` gives mpirun)");
  const char *host = argv[1];
  const char *dir = getenv("AD_PLAN_DIR");
  if (!dir || !*dir)
    return ad_fail(AD_ERR_INPUT,
                   "error: __rsh: AD_PLAN_DIR is not set (the agent is started by `autodist run`, "
                   "which names the plan)");
  ad_plan *plan;
  AD_TRY(ad_plan_load(dir, &plan));
  const ad_plan_node *nd = NULL;
  ad_status st = find_node(plan, host, &nd);
  ad_ssh *s = NULL;
  if (st == AD_OK) {
    const char *accept = getenv("AD_ACCEPT_NEW_HOSTS");
    ad_ssh_target t = {.node = nd->address,
                       .username = nd->username,
                       .port = nd->port,
                       .key_file = nd->key_file,
                       .known_hosts = nd->known_hosts};
    st = ad_ssh_connect(&t, accept && !strcmp(accept, "1"), &s);
  }
  if (st == AD_OK) {
    char *cmd = remote_command(nd, argc - 2, argv + 2);
    /* The lifeline: a pipe whose write end stays open as long as we live. */
    int life[2];
    AD_ASSERT(pipe(life) == 0);
    signal(SIGPIPE, SIG_IGN);
    st = ad_ssh_exec(s, cmd, life[0], relay, NULL, exit_code);
    close(life[0]);
    close(life[1]);
    free(cmd);
  }
  ad_ssh_close(s);
  ad_plan_free(plan);
  return st;
}
