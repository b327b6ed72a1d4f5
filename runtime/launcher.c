/*
 * runtime/launcher.c: `autodist run PLAN_DIR [options]`.
 *
 * Everything that can be wrong with the input is checked here, before any
 * process starts: the options, the plan (ad_plan_load verifies its hashes),
 * the data files against the plan's tensors (runtime/data.c). Then the job is
 * one mpirun in its own process group, running `autodist __worker` once per
 * device (parameter servers included: they are the ranks from `replicas` on,
 * and messages name them "server S (rank R, ...)"), with $AD_RUN_DIR pointing at a fresh temporary
 * folder where each worker leaves rank<R>.pid ("PID HOST"), rank<R>.done or rank<R>.err.
 *
 * The launcher supervises rather than trusts mpirun: every 100 ms it checks
 * whether mpirun exited, whether a worker wrote .err, and whether a worker
 * process vanished without .done (kill(pid, 0)). Any of these, or SIGINT /
 * SIGTERM to `run`, stops the whole job: SIGTERM to mpirun's group and to each
 * worker (OpenMPI puts workers in process groups of their own), SIGKILL after
 * 2 s, reap, remove the run folder. The launcher is a child subreaper, so
 * workers orphaned by a dying mpirun are reparented to it and reaped here too:
 * no process or file of the job outlives `run`.
 *
 * mpirun's stderr passes through a pipe: worker output is forwarded as is,
 * while mpirun's own boxed notices are held back and read for the cause of a
 * death ("... exited on signal 9 (Killed)"), which becomes one error line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "../cli/commands.h"
#include "data.h"
#include "plan.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char run_usage[] =
    "usage: autodist run PLAN_DIR [--data NAME=FILE.npy]... [--steps N | --epochs N]\n"
    "                    [--metrics FILE.jsonl] [--save OUT.onnx] [--out NAME=FILE.npy]...\n"
    "                    [--shuffle SEED]\n"
    "\n"
    "Runs a plan made by `autodist compile` on the devices it names (one process per\n"
    "device, through mpirun). Training plans run --steps N steps or --epochs N epochs\n"
    "(default: 1 epoch) of the plan's global batch; inference plans run once over the\n"
    "data. See docs/cli.md.\n"
    "\n"
    "  --data NAME=FILE.npy    samples for the input (or label) NAME, axis 0 = sample\n"
    "  --steps N | --epochs N  training length\n"
    "  --shuffle SEED          permute the samples once per epoch (splitmix64)\n"
    "  --metrics FILE.jsonl    one JSON line per step: step, loss, samples_per_sec,\n"
    "                          elapsed_sec, bytes_sent\n"
    "  --save OUT.onnx         the model with the trained weights\n"
    "  --out NAME=FILE.npy     output NAME (inference: every sample; training: the last batch)\n"
    "\n"
    "Exit codes: 0 success, 1 the job failed while running, 2 bad input or usage.\n";

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) {
  interrupted = sig;
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- checks before anything starts ---- */

static bool is_local_node(const char *node) {
  if (!strcmp(node, "localhost") || !strcmp(node, "::1") || !strcmp(node, "ip6-localhost"))
    return true;
  struct in_addr a;
  if (inet_pton(AF_INET, node, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127)
    return true;
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  if (!strcmp(node, host))
    return true;
  size_t n = strlen(host); /* "vm" matches "vm.example.org" */
  return n && !strncmp(node, host, n) && node[n] == '.';
}

static ad_status check_local(const ad_plan *plan) {
  for (int i = 0; i < plan->n_devices; i++)
    if (!is_local_node(plan->devices[i].node))
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: device rank %d is on node '%s': multi-node runs are not "
                     "supported yet (every device must be on this machine)",
                     plan->dir, plan->devices[i].rank, plan->devices[i].node);
  return AD_OK;
}

/* An output file must be writable where it is going, or the job would fail
 * only after all its work. */
static ad_status check_output(const char *flag, const char *name, const char *path) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else if (slash == dir)
    dir[1] = 0;
  else
    *slash = 0;
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return ad_fail(AD_ERR_INPUT, "error: %s %s%s%s: is a folder", flag, name ? name : "",
                   name ? "=" : "", path);
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return ad_fail(AD_ERR_INPUT, "error: %s %s%s%s: folder '%s' does not exist", flag,
                   name ? name : "", name ? "=" : "", path, dir);
  if (access(dir, W_OK) != 0)
    return ad_fail(AD_ERR_INPUT, "error: %s %s%s%s: folder '%s' is not writable", flag,
                   name ? name : "", name ? "=" : "", path, dir);
  return AD_OK;
}

static ad_status check_outputs(const ad_run_opts *o) {
  if (o->metrics)
    AD_TRY(check_output("--metrics", NULL, o->metrics));
  if (o->save)
    AD_TRY(check_output("--save", NULL, o->save));
  for (int i = 0; i < o->n_out; i++)
    AD_TRY(check_output("--out", o->out[i].name, o->out[i].path));
  return AD_OK;
}

static ad_status check_inputs(const ad_run_opts *opts, ad_plan **plan_out) {
  ad_plan *plan;
  AD_TRY(ad_plan_load(opts->plan_dir, &plan));
  ad_status st = check_local(plan);
  if (st == AD_OK)
    st = check_outputs(opts);
  ad_npy *arrays = NULL;
  int64_t n = 0;
  if (st == AD_OK)
    st = ad_run_data_load(plan, opts, &arrays, &n);
  if (st == AD_OK) {
    for (int i = 0; i < opts->n_data; i++)
      ad_npy_free(&arrays[i]);
    free(arrays);
  }
  if (st != AD_OK) {
    ad_plan_free(plan);
    return st;
  }
  *plan_out = plan;
  return AD_OK;
}

/* ---- the job ---- */

typedef struct rank_info {
  int pid; /* 0 until rank<R>.pid appears */
  bool done;
} rank_info;

typedef struct job {
  const ad_plan *plan;
  char run_dir[256];
  pid_t mpirun; /* 0 once reaped */
  int mpirun_status;
  int err_fd; /* read end of mpirun's stderr; -1 when closed */
  int n;
  rank_info *ranks;
  /* stderr filter: bytes of an unfinished line, and whether we are inside one
   * of mpirun's "-----" boxes (held back, appended to `notices`). */
  char line[4096];
  size_t line_len;
  bool in_box;
  bool stopping; /* once we stop the job, mpirun's complaints are noise */
  char notices[8192];
  size_t notices_len;
} job;

static bool is_rule(const char *s, size_t n) {
  size_t dashes = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '-')
      dashes++;
    else if (s[i] != '\n' && s[i] != '\r')
      return false;
  }
  return dashes >= 20;
}

static void add_notice(job *j, const char *s, size_t n) {
  size_t room = sizeof j->notices - 1 - j->notices_len;
  if (n > room)
    n = room;
  memcpy(j->notices + j->notices_len, s, n);
  j->notices_len += n;
  j->notices[j->notices_len] = 0;
}

/* One complete line (with its \n or \r) of mpirun's stderr. */
static void filter_line(job *j, const char *s, size_t n) {
  if (is_rule(s, n)) {
    j->in_box = !j->in_box;
    return;
  }
  if (j->in_box || j->stopping || strstr(s, "orte_base_help_aggregate") ||
      strstr(s, "sent help message")) {
    add_notice(j, s, n);
    return;
  }
  fwrite(s, 1, n, stderr);
}

/* Reads what mpirun wrote so far (non-blocking) and forwards or holds it. */
static void pump_stderr(job *j) {
  if (j->err_fd < 0)
    return;
  for (;;) {
    char buf[4096];
    ssize_t got = read(j->err_fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0) {
      if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        if (j->line_len)
          filter_line(j, j->line, j->line_len);
        j->line_len = 0;
        close(j->err_fd);
        j->err_fd = -1;
      }
      break;
    }
    for (ssize_t i = 0; i < got; i++) {
      j->line[j->line_len++] = buf[i];
      if (buf[i] == '\n' || buf[i] == '\r' || j->line_len == sizeof j->line - 1) {
        j->line[j->line_len] = 0;
        filter_line(j, j->line, j->line_len);
        j->line_len = 0;
      }
    }
  }
  fflush(stderr);
}

static void rank_file(const job *j, int r, const char *ext, char *out, size_t cap) {
  snprintf(out, cap, "%s/rank%d.%s", j->run_dir, r, ext);
}

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void refresh_ranks(job *j) {
  char path[512];
  for (int r = 0; r < j->n; r++) {
    rank_info *ri = &j->ranks[r];
    if (!ri->pid) {
      rank_file(j, r, "pid", path, sizeof path);
      FILE *f = fopen(path, "r");
      if (f) {
        if (fscanf(f, "%d", &ri->pid) != 1)
          ri->pid = 0;
        fclose(f);
      }
    }
    if (!ri->done) {
      rank_file(j, r, "done", path, sizeof path);
      ri->done = file_exists(path);
    }
  }
}

/* The lowest rank that wrote .err, with its message; -1 when none did. */
static int find_error(job *j, char *msg, size_t cap) {
  char path[512];
  for (int r = 0; r < j->n; r++) {
    rank_file(j, r, "err", path, sizeof path);
    char *data;
    size_t len;
    if (!file_exists(path) || ad_file_read(path, &data, &len) != AD_OK)
      continue;
    while (len && (data[len - 1] == '\n' || data[len - 1] == ' '))
      data[--len] = 0;
    snprintf(msg, cap, "%s", data);
    free(data);
    return r;
  }
  return -1;
}

/* The lowest rank whose process is gone without .done; -1 when none. */
static int find_vanished(job *j) {
  for (int r = 0; r < j->n; r++) {
    rank_info *ri = &j->ranks[r];
    if (ri->pid > 0 && !ri->done && kill(ri->pid, 0) != 0 && errno == ESRCH) {
      /* It may have written .done between our two looks. */
      char path[512];
      rank_file(j, r, "done", path, sizeof path);
      ri->done = file_exists(path);
      if (!ri->done)
        return r;
    }
  }
  return -1;
}

static void reap_mpirun(job *j, int flags) {
  if (!j->mpirun)
    return;
  int status;
  pid_t got = waitpid(j->mpirun, &status, flags);
  if (got == j->mpirun) {
    j->mpirun = 0;
    j->mpirun_status = status;
  }
}

/* Reaps every other child (workers orphaned to us as subreaper). */
static void reap_orphans(void) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

/* Whether `pid` is still a worker of this job: a child of mpirun, or ours
 * once mpirun is gone. A pid the system reused for something else is not. */
static bool is_ours(const job *j, int pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return false;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  char state;
  int ppid;
  if (!p || sscanf(p + 1, " %c %d", &state, &ppid) != 2)
    return false;
  return ppid == getpid() || (j->mpirun && ppid == j->mpirun);
}

static bool anything_alive(job *j) {
  if (j->mpirun)
    return true;
  for (int r = 0; r < j->n; r++)
    if (j->ranks[r].pid > 0 && is_ours(j, j->ranks[r].pid))
      return true;
  return false;
}

static void signal_all(job *j, int sig) {
  if (j->mpirun)
    kill(-j->mpirun, sig);
  for (int r = 0; r < j->n; r++)
    if (j->ranks[r].pid > 0 && is_ours(j, j->ranks[r].pid))
      kill(j->ranks[r].pid, sig);
}

/* Stops whatever is left of the job: SIGTERM, then SIGKILL after 2 s. */
static void stop_job(job *j) {
  pump_stderr(j); /* what the workers said before */
  j->stopping = true;
  refresh_ranks(j); /* pids of workers that started since the last look */
  signal_all(j, SIGTERM);
  double until = now_sec() + 2.0;
  while (now_sec() < until) {
    pump_stderr(j);
    reap_mpirun(j, WNOHANG);
    reap_orphans();
    if (!anything_alive(j))
      break;
    usleep(20000);
  }
  if (anything_alive(j)) {
    signal_all(j, SIGKILL);
    reap_mpirun(j, 0);
  }
  for (int i = 0; i < 50 && anything_alive(j); i++) {
    reap_orphans();
    usleep(10000);
  }
  reap_orphans();
  pump_stderr(j);
}

static void remove_run_dir(job *j) {
  DIR *d = opendir(j->run_dir);
  if (d) {
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
        snprintf(path, sizeof path, "%s/%s", j->run_dir, e->d_name);
        unlink(path);
      }
    closedir(d);
  }
  rmdir(j->run_dir);
}

/* "killed by signal 9" from mpirun's notice about `rank`, if it gave one. */
static void death_cause(const job *j, int rank, char *out, size_t cap) {
  char key[64];
  snprintf(key, sizeof key, "process rank %d with PID", rank);
  const char *p = strstr(j->notices, key);
  int sig, code;
  if (p && (p = strstr(p, "exited on signal ")) && sscanf(p, "exited on signal %d", &sig) == 1) {
    snprintf(out, cap, "killed by signal %d", sig);
    return;
  }
  p = strstr(j->notices, "Exit code:");
  if (p && sscanf(p, "Exit code: %d", &code) == 1) {
    snprintf(out, cap, "exit status %d", code);
    return;
  }
  snprintf(out, cap, "exit status unknown");
}

/* "worker rank 1 (localhost, pid 4242)" or, for a parameter server,
 * "server 0 (rank 2, localhost, pid 4243)". */
static const char *who(const job *j, int rank, char *out, size_t cap) {
  const ad_plan_device *dv = NULL;
  for (int i = 0; i < j->plan->n_devices; i++)
    if (j->plan->devices[i].rank == rank)
      dv = &j->plan->devices[i];
  const char *node = dv ? dv->node : "?";
  if (dv && dv->role == AD_DEVICE_SERVER)
    snprintf(out, cap, "server %d (rank %d, %s, pid %d)", rank - j->plan->replicas, rank, node,
             j->ranks[rank].pid);
  else
    snprintf(out, cap, "worker rank %d (%s, pid %d)", rank, node, j->ranks[rank].pid);
  return out;
}

/* Waits for mpirun's own word on a death (up to 1.5 s), so the message can
 * name the signal. */
static void await_notice(job *j, int rank) {
  char key[64];
  snprintf(key, sizeof key, "process rank %d with PID", rank);
  double until = now_sec() + 1.5;
  while (now_sec() < until && !strstr(j->notices, key) && !strstr(j->notices, "Exit code:")) {
    pump_stderr(j);
    reap_mpirun(j, WNOHANG);
    if (!j->mpirun && j->err_fd < 0)
      break;
    usleep(20000);
  }
}

static ad_status supervise(job *j) {
  char name[512];
  for (;;) {
    struct pollfd pfd = {.fd = j->err_fd, .events = POLLIN};
    int rc = poll(&pfd, j->err_fd >= 0 ? 1 : 0, 100);
    (void)rc;
    pump_stderr(j);
    if (interrupted) {
      int sig = interrupted;
      stop_job(j);
      return ad_fail(AD_ERR_JOB, "error: interrupted by signal %d; the job was stopped", sig);
    }
    refresh_ranks(j);
    char msg[3000];
    int r = find_error(j, msg, sizeof msg);
    if (r >= 0) {
      stop_job(j);
      return ad_fail(AD_ERR_JOB, "%s: %s", who(j, r, name, sizeof name), msg);
    }
    r = find_vanished(j);
    if (r >= 0) {
      await_notice(j, r);
      /* A clean failure writes .err before it exits. */
      int e = find_error(j, msg, sizeof msg);
      stop_job(j);
      if (e >= 0)
        return ad_fail(AD_ERR_JOB, "%s: %s", who(j, e, name, sizeof name), msg);
      char cause[64];
      death_cause(j, r, cause, sizeof cause);
      return ad_fail(AD_ERR_JOB, "error: %s died (%s); the job was stopped",
                     who(j, r, name, sizeof name), cause);
    }
    reap_mpirun(j, WNOHANG);
    if (!j->mpirun) {
      int st = j->mpirun_status;
      /* The rest of mpirun's output (bounded: an orphan might hold the pipe). */
      for (int i = 0; i < 50 && j->err_fd >= 0; i++) {
        struct pollfd drain = {.fd = j->err_fd, .events = POLLIN};
        if (poll(&drain, 1, 20) > 0)
          pump_stderr(j);
      }
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        for (int i = 0; i < 100 && anything_alive(j); i++) {
          reap_orphans();
          usleep(10000);
        }
        reap_orphans();
        return AD_OK;
      }
      refresh_ranks(j);
      int e = find_error(j, msg, sizeof msg);
      stop_job(j);
      if (e >= 0)
        return ad_fail(AD_ERR_JOB, "%s: %s", who(j, e, name, sizeof name), msg);
      for (int k = 0; k < j->n; k++)
        if (j->ranks[k].pid > 0 && !j->ranks[k].done) {
          char cause[64];
          death_cause(j, k, cause, sizeof cause);
          return ad_fail(AD_ERR_JOB, "error: %s died (%s); the job was stopped",
                         who(j, k, name, sizeof name), cause);
        }
      int started = 0, done = 0;
      for (int k = 0; k < j->n; k++) {
        started += j->ranks[k].pid > 0;
        done += j->ranks[k].done;
      }
      int code = WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st);
      const char *how = WIFEXITED(st) ? "exit status" : "signal";
      if (done == j->n) {
        /* Every worker finished its work (outputs are written); what failed
         * came after, e.g. a leak checker at process exit. */
        fprintf(stderr, "autodist: warning: mpirun ended with %s %d after every worker finished\n",
                how, code);
        return AD_OK;
      }
      if (j->notices_len)
        fputs(j->notices, stderr);
      return ad_fail(AD_ERR_JOB, "error: mpirun failed (%s %d) before %s workers started", how,
                     code, started ? "all" : "the");
    }
  }
}

/* Starts mpirun in a process group of its own, stderr into a pipe. */
static ad_status start_mpirun(job *j, int argc, char **argv) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0)
    return ad_fail(AD_ERR_JOB, "error: cannot find the autodist executable: %s", strerror(errno));
  exe[n] = 0;
  char np[16];
  snprintf(np, sizeof np, "%d", j->n);
  const char *fixed[] = {"mpirun",
                         "--allow-run-as-root",
                         "--bind-to",
                         "none",
                         "-np",
                         np,
                         "--mca",
                         "btl",
                         "self,vader",
                         "--mca",
                         "btl_vader_single_copy_mechanism",
                         "none",
                         exe,
                         "__worker"};
  int nf = (int)(sizeof fixed / sizeof *fixed);
  char **args = ad_xcalloc((size_t)(nf + argc + 1), sizeof *args);
  for (int i = 0; i < nf; i++)
    args[i] = (char *)fixed[i];
  for (int i = 1; i < argc; i++)
    args[nf + i - 1] = argv[i];

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    free(args);
    return ad_fail(AD_ERR_JOB, "error: pipe: %s", strerror(errno));
  }
  bool tty = isatty(2);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    free(args);
    return ad_fail(AD_ERR_JOB, "error: fork: %s", strerror(errno));
  }
  if (pid == 0) {
    setpgid(0, 0);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    dup2(fds[1], 2);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0)
      dup2(null, 0);
    setenv("AD_RUN_DIR", j->run_dir, 1);
    setenv("AD_TTY", tty ? "1" : "0", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    execvp("mpirun", args);
    fprintf(stderr, "autodist: error: cannot run mpirun: %s\n", strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid); /* also here: no window where a signal reaches the wrong group */
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  free(args);
  j->mpirun = pid;
  j->err_fd = fds[0];
  return AD_OK;
}

static ad_status run_job(const ad_plan *plan, int argc, char **argv) {
  job j = {.plan = plan, .err_fd = -1, .n = plan->n_devices};
  const char *tmp = getenv("TMPDIR");
  snprintf(j.run_dir, sizeof j.run_dir, "%s/autodist-run.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(j.run_dir))
    return ad_fail(AD_ERR_JOB, "error: cannot create a run folder in %s: %s",
                   tmp && *tmp ? tmp : "/tmp", strerror(errno));
  j.ranks = ad_xcalloc((size_t)j.n, sizeof *j.ranks);

  struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
  sigemptyset(&sa.sa_mask);
  interrupted = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  prctl(PR_SET_CHILD_SUBREAPER, 1);

  ad_status st = start_mpirun(&j, argc, argv);
  if (st == AD_OK)
    st = supervise(&j);
  if (j.err_fd >= 0)
    close(j.err_fd);
  remove_run_dir(&j);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  free(j.ranks);
  return st;
}

ad_status ad_cmd_run(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(run_usage, stdout);
      return AD_OK;
    }
  ad_run_opts opts;
  AD_TRY(ad_run_opts_parse(argc, argv, &opts));
  ad_plan *plan = NULL;
  ad_status st = check_inputs(&opts, &plan);
  ad_run_opts_free(&opts);
  if (st != AD_OK)
    return st;
  st = run_job(plan, argc, argv);
  ad_plan_free(plan);
  return st;
}
