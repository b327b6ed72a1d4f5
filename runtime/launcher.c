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
#include "checkpoint.h"
#include "data.h"
#include "plan.h"
#include "ssh.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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
    "                    [--shuffle SEED] [--checkpoint DIR [--checkpoint-every N] [--resume]]\n"
    "                    [--accept-new-hosts]\n"
    "\n"
    "Runs a plan made by `autodist compile` on the devices it names (one process per\n"
    "device, through mpirun). Training plans run --steps N steps or --epochs N epochs\n"
    "(default: 1 epoch) of the plan's global batch; inference plans run once over the\n"
    "data. See docs/cli.md.\n"
    "\n"
    "  --data NAME=FILE.npy    samples for the input (or label) NAME, axis 0 = sample\n"
    "  --steps N | --epochs N  training length\n"
    "  --shuffle SEED          permute the samples once per epoch (splitmix64)\n"
    "  --metrics FILE.jsonl    one JSON line per step: step, loss (inference: samples),\n"
    "                          samples_per_sec, elapsed_sec, bytes_sent\n"
    "  --save OUT.onnx         the model with the trained weights\n"
    "  --out NAME=FILE.npy     inference plans: output NAME of every sample, in order\n"
    "  --checkpoint DIR        checkpoints on the chief: after the last step, and with\n"
    "                          --checkpoint-every N after every N-th step\n"
    "  --resume                continue from the newest checkpoint in DIR (bit for bit)\n"
    "  --accept-new-hosts      several nodes: record host keys not yet in known_hosts\n"
    "                          (a changed key is always refused)\n"
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

/* `run` is started on the chief: rank 0 (progress, --metrics, --save, --out)
 * runs here, and the other nodes are reached from here. On one node every
 * device must be on this machine. */
static ad_status check_nodes(const ad_plan *plan) {
  const char *chief = NULL;
  for (int i = 0; i < plan->n_nodes; i++)
    if (plan->nodes[i].chief || plan->n_nodes == 1)
      chief = plan->nodes[i].address;
  for (int i = 0; i < plan->n_devices; i++) {
    const char *node = plan->devices[i].node;
    if ((!chief || !strcmp(node, chief)) && !is_local_node(node))
      return ad_fail(AD_ERR_INPUT,
                     "%s: error: device rank %d is on node '%s', the plan's chief, which is not "
                     "this machine: start `autodist run` on '%s'",
                     plan->dir, plan->devices[i].rank, node, node);
  }
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
  ad_status st = check_nodes(plan);
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
    st = ad_ckpt_check(plan, opts, n); /* --checkpoint / --resume */
  }
  if (st != AD_OK) {
    ad_plan_free(plan);
    return st;
  }
  *plan_out = plan;
  return AD_OK;
}

/* ---- multi-node: the other nodes, reached over SSH ---- */

/* A node of the plan other than the chief, as `run` prepares it. */
typedef struct remote_node {
  const ad_plan_node *node;
  char *cache;    /* ${XDG_CACHE_HOME:-$HOME/.cache}/autodist on the node */
  char *plan_dir; /* the staged plan there: cache/plans/<SHA-256 of plan.yaml> */
  char **data;    /* per --data: cache/data/<SHA-256>.npy there */
} remote_node;

/* What a multi-node job knows about itself; n == 0 for a single-node job. */
typedef struct cluster {
  int n;
  remote_node *nodes;
  const ad_plan_node *chief;
  char job_id[24];     /* "adj-" + 16 hex digits, on every command line of the job */
  char exe[4096];      /* this binary; the nodes run the one at the same path */
  char plan_abs[4096]; /* the plan folder here, absolute (for `__rsh`) */
  char plan_hash[65];  /* SHA-256 of plan.yaml */
  int n_data;
  char (*data_hash)[65]; /* per --data */
  bool loopback;         /* every node has a loopback address */
  bool accept_new;
} cluster;

static void cluster_free(cluster *c) {
  for (int i = 0; i < c->n; i++) {
    remote_node *rn = &c->nodes[i];
    free(rn->cache);
    free(rn->plan_dir);
    for (int k = 0; rn->data && k < c->n_data; k++)
      free(rn->data[k]);
    free(rn->data);
  }
  free(c->nodes);
  free(c->data_hash);
  memset(c, 0, sizeof *c);
}

static bool is_loopback(const char *node) {
  struct in_addr a;
  return !strcmp(node, "localhost") || !strcmp(node, "ip6-localhost") || !strcmp(node, "::1") ||
         (inet_pton(AF_INET, node, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127);
}

static ad_status self_exe(char *out, size_t cap) {
  ssize_t n = readlink("/proc/self/exe", out, cap - 1);
  if (n <= 0)
    return ad_fail(AD_ERR_JOB, "error: cannot find the autodist executable: %s", strerror(errno));
  out[n] = 0;
  return AD_OK;
}

static ad_status hash_file(const char *path, char out[65]) {
  char *data;
  size_t len;
  AD_TRY(ad_file_read(path, &data, &len));
  ad_sha256_hex(data, len, out);
  free(data);
  return AD_OK;
}

/* The plan's nodes other than the chief, and everything about the job the
 * nodes will need. A plan without nodes (one machine) leaves c->n at 0. */
static ad_status cluster_init(cluster *c, const ad_plan *plan, const ad_run_opts *o) {
  memset(c, 0, sizeof *c);
  if (plan->n_nodes <= 1)
    return AD_OK;
  for (int i = 0; i < plan->n_nodes; i++)
    if (plan->nodes[i].chief)
      c->chief = &plan->nodes[i];
  AD_ASSERT(c->chief); /* ad_plan_load checked */
  c->nodes = ad_xcalloc((size_t)plan->n_nodes, sizeof *c->nodes);
  c->loopback = is_loopback(c->chief->address);
  for (int i = 0; i < plan->n_nodes; i++) {
    const ad_plan_node *nd = &plan->nodes[i];
    c->loopback &= is_loopback(nd->address);
    if (nd != c->chief)
      c->nodes[c->n++].node = nd;
  }
  c->accept_new = o->accept_new_hosts;
  unsigned char rnd[8] = {0};
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  ssize_t got = fd >= 0 ? read(fd, rnd, sizeof rnd) : -1;
  if (fd >= 0)
    close(fd);
  uint64_t id = (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL) ^ (uint64_t)(now_sec() * 1e9);
  for (int k = 0; got == (ssize_t)sizeof rnd && k < 8; k++)
    id ^= (uint64_t)rnd[k] << (8 * k);
  snprintf(c->job_id, sizeof c->job_id, "adj-%016llx", (unsigned long long)id);
  AD_TRY(self_exe(c->exe, sizeof c->exe));
  if (!realpath(plan->dir, c->plan_abs))
    return ad_fail(AD_ERR_INPUT, "%s: error: %s", plan->dir, strerror(errno));
  char path[4200];
  snprintf(path, sizeof path, "%s/plan.yaml", c->plan_abs);
  AD_TRY(hash_file(path, c->plan_hash));
  c->n_data = o->n_data;
  c->data_hash = ad_xcalloc((size_t)o->n_data + 1, sizeof *c->data_hash);
  for (int k = 0; k < o->n_data; k++)
    AD_TRY(hash_file(o->data[k].path, c->data_hash[k]));
  return AD_OK;
}

/* ---- commands on a node ---- */

typedef struct capture {
  char out[16384], err[4096];
  size_t n_out, n_err;
} capture;

static void capture_sink(void *ctx, int fd, const char *buf, size_t n) {
  capture *c = ctx;
  char *dst = fd == 1 ? c->out : c->err;
  size_t *len = fd == 1 ? &c->n_out : &c->n_err;
  size_t cap = (fd == 1 ? sizeof c->out : sizeof c->err) - 1;
  if (n > cap - *len)
    n = cap - *len;
  memcpy(dst + *len, buf, n);
  *len += n;
  dst[*len] = 0;
}

/* The first line of what a command wrote to stderr, for a message. */
static const char *first_line(capture *c) {
  char *nl = strchr(c->err, '\n');
  if (nl)
    *nl = 0;
  return *c->err ? c->err : "no message";
}

/* `cmd` in the environment the node's workers get from `__rsh`
 * (runtime/rsh.c): in the home folder, after the python_venv, with the
 * shared_envs exported (quoted: they arrive literally). A failing
 * python_venv is exit status 97. */
static char *node_command(const ad_plan_node *nd, const char *cmd) {
  char *s = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&s, &len);
  AD_ASSERT(f);
  fputs("cd || exit 97; ", f);
  if (nd->python_venv)
    fprintf(f, "{ %s\n} || exit 97; ", nd->python_venv);
  if (nd->n_envs) {
    fputs("export", f);
    for (int k = 0; k < nd->n_envs; k++) {
      char *q = ad_shell_quote(nd->envs[k].value);
      fprintf(f, " %s=%s", nd->envs[k].key, q);
      free(q);
    }
    fputs("; ", f);
  }
  fputs(cmd, f);
  fclose(f);
  return s;
}

/* Runs `cmd` on the node (with its environment), capturing its output. */
static ad_status node_run(ad_ssh *s, const ad_plan_node *nd, const char *cmd, capture *cap,
                          int *code) {
  memset(cap, 0, sizeof *cap);
  char *full = node_command(nd, cmd);
  ad_status st = ad_ssh_exec(s, full, -1, capture_sink, cap, code);
  free(full);
  return st;
}

static ad_status check_interrupted(const ad_plan_node *nd) {
  if (interrupted)
    return ad_fail(AD_ERR_JOB,
                   "error: interrupted by signal %d while preparing node '%s'; nothing "
                   "was started",
                   (int)interrupted, nd->address);
  return AD_OK;
}

/* Learns where the node keeps staged files and checks that it runs this
 * version of autodist at this binary's path. */
static ad_status probe_node(const cluster *c, remote_node *rn, ad_ssh *s) {
  const ad_plan_node *nd = rn->node;
  char *qexe = ad_shell_quote(c->exe), cmd[8400];
  snprintf(cmd, sizeof cmd,
           "printf 'cache=%%s\\n' \"${XDG_CACHE_HOME:-$HOME/.cache}/autodist\"; %s --version",
           qexe);
  free(qexe);
  capture cap;
  int code = 0;
  AD_TRY(node_run(s, nd, cmd, &cap, &code));
  if (code == 97 && !nd->python_venv)
    return ad_fail(AD_ERR_INPUT, "error: node '%s': cannot enter the home folder: %s", nd->address,
                   first_line(&cap));
  if (code == 97)
    return ad_fail(AD_ERR_INPUT,
                   "error: node '%s': its python_venv '%s' failed: %s (fix the ssh group's "
                   "python_venv in the resource spec and compile again)",
                   nd->address, nd->python_venv ? nd->python_venv : "", first_line(&cap));
  if (code == 127 || code == 126)
    return ad_fail(AD_ERR_INPUT,
                   "error: node '%s': %s: %s (every node needs autodist %s at the same path as "
                   "on the chief)",
                   nd->address, c->exe, code == 127 ? "not found" : "cannot be run", AD_VERSION);
  char *line = strstr(cap.out, "cache=");
  char *ver = strstr(cap.out, "autodist ");
  if (line) {
    line += 6;
    line[strcspn(line, "\n")] = 0;
  }
  if (ver)
    ver[strcspn(ver, "\n")] = 0;
  if (code != 0 || !ver)
    return ad_fail(AD_ERR_INPUT, "error: node '%s': `%s --version` failed (exit status %d): %s",
                   nd->address, c->exe, code, first_line(&cap));
  if (strcmp(ver, "autodist " AD_VERSION))
    return ad_fail(AD_ERR_INPUT,
                   "error: node '%s': %s is '%s', this one is 'autodist %s' (every node needs the "
                   "same version)",
                   nd->address, c->exe, ver, AD_VERSION);
  if (!line || line[0] != '/')
    return ad_fail(AD_ERR_JOB,
                   "error: node '%s': cannot find a cache folder there (set HOME or "
                   "XDG_CACHE_HOME for the user)",
                   nd->address);
  rn->cache = ad_xstrdup(line);
  return AD_OK;
}

/* `__worker --verify-staged` over the node's staged plan and data: *plan_ok,
 * and ok[k] per data file. */
static ad_status verify_node(const cluster *c, remote_node *rn, ad_ssh *s, bool *plan_ok,
                             bool *ok) {
  char *cmd = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&cmd, &len);
  AD_ASSERT(f);
  char *q = ad_shell_quote(c->exe);
  fprintf(f, "%s __worker --verify-staged", q);
  free(q);
  q = ad_shell_quote(rn->plan_dir);
  fprintf(f, " %s", q);
  free(q);
  for (int k = 0; k < c->n_data; k++) {
    q = ad_shell_quote(rn->data[k]);
    fprintf(f, " %s", q);
    free(q);
  }
  fclose(f);
  capture cap;
  int code = 0;
  ad_status st = node_run(s, rn->node, cmd, &cap, &code);
  free(cmd);
  AD_TRY(st);
  *plan_ok = true;
  for (int k = 0; k < c->n_data; k++)
    ok[k] = true;
  int bad = 0;
  for (char *p = cap.out; (p = strstr(p, "bad ")); p++) {
    char *end = p + 4 + strcspn(p + 4, "\n");
    size_t n = (size_t)(end - p - 4);
    if (strlen(rn->plan_dir) == n && !strncmp(p + 4, rn->plan_dir, n))
      *plan_ok = false, bad++;
    for (int k = 0; k < c->n_data; k++)
      if (strlen(rn->data[k]) == n && !strncmp(p + 4, rn->data[k], n))
        ok[k] = false, bad++;
  }
  if (code != 0 && (code != 1 || !bad))
    return ad_fail(AD_ERR_JOB,
                   "error: node '%s': `autodist __worker --verify-staged` failed (exit "
                   "status %d): %s",
                   rn->node->address, code, first_line(&cap));
  return AD_OK;
}

/* Copies the plan into a folder of this job's own and renames it into place
 * under a lock (flock, released by the kernel whatever happens), replacing a
 * staged copy only when that one is not valid: a run using a valid copy is
 * never disturbed, and two runs staging at once both end with a whole copy. */
static ad_status copy_plan(const cluster *c, remote_node *rn, ad_ssh *s, const ad_plan *plan) {
  const ad_plan_node *nd = rn->node;
  char tmp_name[128], tmp[4400], local[4400], remote[8800];
  snprintf(tmp_name, sizeof tmp_name, "%s.tmp.%s", c->plan_hash, c->job_id);
  snprintf(tmp, sizeof tmp, "%s/plans/%s", rn->cache, tmp_name);
  ad_status st = AD_OK;
  for (int i = -1; st == AD_OK && i < plan->n_files; i++) {
    const char *name = i < 0 ? "plan.yaml" : plan->files[i].path;
    snprintf(local, sizeof local, "%s/%s", c->plan_abs, name);
    snprintf(remote, sizeof remote, "%s/%s", tmp, name);
    st = check_interrupted(nd);
    if (st == AD_OK)
      st = ad_ssh_upload(s, local, remote);
  }
  char *qexe = ad_shell_quote(c->exe), script[8800];
  snprintf(script, sizeof script,
           "find . -maxdepth 1 -name '*.tmp.adj-*' -mmin +1440 -exec rm -rf {} +; "
           "if %s __worker --verify-staged %s >/dev/null 2>&1; then rm -rf %s; "
           "else rm -rf %s && mv -T %s %s; fi",
           qexe, c->plan_hash, tmp_name, c->plan_hash, tmp_name, c->plan_hash);
  free(qexe);
  char *qscript = ad_shell_quote(script);
  char *qdir = ad_xmalloc(strlen(rn->cache) + 8);
  sprintf(qdir, "%s/plans", rn->cache);
  char *qplans = ad_shell_quote(qdir);
  free(qdir);
  char *cmd = ad_xmalloc(strlen(qscript) * 2 + strlen(qplans) + 256);
  if (st == AD_OK)
    sprintf(cmd,
            "cd %s && if command -v flock >/dev/null 2>&1; then flock .lock sh -c %s; "
            "else sh -c %s; fi",
            qplans, qscript, qscript);
  else /* leave nothing half-copied behind */
    sprintf(cmd, "cd %s && rm -rf %s", qplans, tmp_name);
  free(qscript);
  free(qplans);
  capture cap;
  int code = 0;
  ad_status fin = node_run(s, nd, cmd, &cap, &code);
  free(cmd);
  AD_TRY(st);
  AD_TRY(fin);
  if (code != 0)
    return ad_fail(AD_ERR_JOB, "error: node '%s': cannot put the plan into %s: %s", nd->address,
                   rn->plan_dir, first_line(&cap));
  return AD_OK;
}

/* Connects to a node, checks its autodist and stages the plan and the data
 * files there unless it holds them already. */
static ad_status stage_node(const cluster *c, remote_node *rn, const ad_plan *plan,
                            const ad_run_opts *o) {
  const ad_plan_node *nd = rn->node;
  ad_ssh_target t = {.node = nd->address,
                     .username = nd->username,
                     .port = nd->port,
                     .key_file = nd->key_file,
                     .known_hosts = nd->known_hosts};
  ad_ssh *s;
  AD_TRY(check_interrupted(nd));
  AD_TRY(ad_ssh_connect(&t, c->accept_new, &s));
  ad_status st = probe_node(c, rn, s);
  bool plan_ok = true, *ok = ad_xcalloc((size_t)c->n_data + 1, sizeof *ok);
  bool plan_copied = false;
  int data_copied = 0;
  if (st == AD_OK) {
    size_t n = strlen(rn->cache) + 128;
    rn->plan_dir = ad_xmalloc(n);
    snprintf(rn->plan_dir, n, "%s/plans/%s", rn->cache, c->plan_hash);
    rn->data = ad_xcalloc((size_t)c->n_data + 1, sizeof *rn->data);
    for (int k = 0; k < c->n_data; k++) {
      rn->data[k] = ad_xmalloc(n);
      snprintf(rn->data[k], n, "%s/data/%s.npy", rn->cache, c->data_hash[k]);
    }
    st = verify_node(c, rn, s, &plan_ok, ok);
  }
  if (st == AD_OK && !plan_ok) {
    st = copy_plan(c, rn, s, plan);
    plan_copied = true;
  }
  for (int k = 0; st == AD_OK && k < c->n_data; k++)
    if (!ok[k]) {
      st = check_interrupted(nd);
      if (st == AD_OK)
        st = ad_ssh_upload(s, o->data[k].path, rn->data[k]);
      data_copied++;
    }
  if (st == AD_OK && (plan_copied || data_copied)) {
    /* What was copied must now verify, read back by the node's autodist. */
    st = verify_node(c, rn, s, &plan_ok, ok);
    int bad = !plan_ok;
    for (int k = 0; k < c->n_data; k++)
      bad += !ok[k];
    if (st == AD_OK && bad)
      st = ad_fail(AD_ERR_JOB, "error: node '%s': %d file%s copied into %s did not verify",
                   nd->address, bad, bad == 1 ? "" : "s", rn->cache);
    if (st == AD_OK)
      fprintf(stderr, "autodist: node '%s': copied %s%d data file%s into %s\n", nd->address,
              plan_copied ? "the plan and " : "", data_copied, data_copied == 1 ? "" : "s",
              rn->cache);
  }
  free(ok);
  ad_ssh_close(s);
  return st;
}

/* Stages every node in turn; the first failure ends it (its message names
 * the node). */
static ad_status stage_nodes(const cluster *c, const ad_plan *plan, const ad_run_opts *o) {
  for (int i = 0; i < c->n; i++) {
    ad_status st = stage_node(c, &c->nodes[i], plan, o);
    if (st != AD_OK && interrupted) /* a cut connection is the signal's doing */
      st = check_interrupted(c->nodes[i].node);
    AD_TRY(st);
  }
  return AD_OK;
}

/* After a failure: kills whatever is left of the job on each node with
 * `pkill -KILL -f` on the job's id, which every worker (`__worker --job ID`)
 * and MPI daemon (`--mca autodist_job ID`) of the job has on its command
 * line; the pattern "[a]dj-..." does not match the shell running pkill. One
 * child process per node, all bounded to 4 s together, so that a node that
 * no longer answers cannot hold up the report. */
static void sweep_nodes(const cluster *c) {
  if (!c || !c->n)
    return;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "pkill -KILL -f '[%c]%s'; exit 0", c->job_id[0], c->job_id + 1);
  pid_t *kids = ad_xcalloc((size_t)c->n, sizeof *kids);
  fflush(NULL);
  for (int i = 0; i < c->n; i++) {
    kids[i] = fork();
    if (kids[i] == 0) {
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      const ad_plan_node *nd = c->nodes[i].node;
      ad_ssh_target t = {.node = nd->address,
                         .username = nd->username,
                         .port = nd->port,
                         .key_file = nd->key_file,
                         .known_hosts = nd->known_hosts};
      ad_ssh *s;
      int code;
      if (ad_ssh_connect(&t, c->accept_new, &s) == AD_OK) {
        ad_status st = ad_ssh_exec(s, cmd, -1, NULL, NULL, &code);
        (void)st;
        ad_ssh_close(s);
      }
      _exit(0);
    }
  }
  double until = now_sec() + 4.0;
  for (int left = c->n; left && now_sec() < until;) {
    left = 0;
    for (int i = 0; i < c->n; i++)
      if (kids[i] > 0 && waitpid(kids[i], NULL, WNOHANG) == 0)
        left++;
      else
        kids[i] = 0;
    if (left)
      usleep(20000);
  }
  for (int i = 0; i < c->n; i++)
    if (kids[i] > 0) {
      kill(kids[i], SIGKILL);
      waitpid(kids[i], NULL, 0);
    }
  free(kids);
}

/* ---- the job ---- */

typedef struct rank_info {
  int pid; /* 0 until rank<R>.pid appears */
  bool done;
  bool remote; /* on another node: pid, done and err come as marker lines */
  char *err;   /* a remote rank's error message */
} rank_info;

/* Multi-node: one of mpirun's output streams, every chunk tagged by
 * --tag-output with "[JOB,RANK]<stderr>:", cut into lines per rank. */
typedef struct tag_stream {
  FILE *to;      /* stderr or stdout */
  int cur;       /* rank of the text being read; -1: untagged (mpirun's own) */
  char pend[64]; /* the start of a tag cut off by a read */
  size_t n_pend;
  char (*lines)[2048]; /* per rank, and [n] for untagged text */
  size_t *lens;
} tag_stream;

typedef struct job {
  const ad_plan *plan;
  char run_dir[256];
  pid_t mpirun;     /* 0 once reaped */
  pid_t mpirun_pid; /* as started */
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
  const cluster *cl;  /* multi-node: the other nodes; NULL on one machine */
  int out_fd;         /* multi-node: read end of mpirun's stdout; -1 when closed */
  tag_stream tags[2]; /* multi-node: mpirun's stderr (err_fd) and stdout (out_fd) */
  double trouble_at;  /* multi-node: when mpirun first reported a failure */
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

/* ---- multi-node output: mpirun's --tag-output, per rank ---- */

/* The node a rank runs on (its device's address). */
static const char *rank_node(const job *j, int rank) {
  for (int i = 0; i < j->plan->n_devices; i++)
    if (j->plan->devices[i].rank == rank)
      return j->plan->devices[i].node;
  return "?";
}

/* Whether s[0..n) (s[0] == '[') starts with a tag "[JOB,RANK]<stderr>:": 1
 * with the rank and the tag's length, 0 when it may be one cut short by a
 * read, -1 when it is none. */
static int parse_tag(const char *s, size_t n, int *rank, size_t *len) {
  size_t i = 1;
  long v[2] = {0, 0};
  for (int part = 0; part < 2; part++) {
    size_t d0 = i;
    while (i < n && s[i] >= '0' && s[i] <= '9' && i - d0 < 9)
      v[part] = 10 * v[part] + (s[i++] - '0');
    if (i == n)
      return 0;
    if (i == d0 || s[i] != (part ? ']' : ','))
      return -1;
    i++;
  }
  static const char *const names[] = {"<stdout>:", "<stderr>:", "<stddiag>:"};
  for (int k = 0; k < 3; k++) {
    size_t m = strlen(names[k]), have = n - i < m ? n - i : m;
    if (!strncmp(s + i, names[k], have)) {
      if (have < m)
        return 0;
      *rank = (int)v[1];
      *len = i + m;
      return 1;
    }
  }
  return -1;
}

/* "@autodist:pid PID HOST", "@autodist:done" or "@autodist:err MESSAGE" from
 * a worker on another node (runtime/worker.c). */
static void take_marker(job *j, int r, const char *s) {
  rank_info *ri = &j->ranks[r];
  ri->remote = true;
  if (!strncmp(s, "pid ", 4)) {
    ri->pid = atoi(s + 4);
  } else if (!strncmp(s, "done", 4)) {
    ri->done = true;
  } else if (!strncmp(s, "err", 3) && !ri->err) {
    ri->err = ad_xstrdup(s + 3 + (s[3] == ' '));
    ri->err[strcspn(ri->err, "\r\n")] = 0;
  }
}

/* One line (or a piece ending in \r) of rank r, or of mpirun itself (r ==
 * n): markers are taken, mpirun's text goes through filter_line, and a
 * worker's text is printed after "[NODE rank R] ". Rank 0's progress and
 * summary lines speak for the job and stay bare. */
static void tag_line(job *j, tag_stream *ts, int r, const char *s, size_t n) {
  if (r == j->n) {
    if (ts->to == stderr)
      filter_line(j, s, n);
    else
      fwrite(s, 1, n, ts->to);
    return;
  }
  if (ts->to == stderr && !strncmp(s, "@autodist:", 10)) {
    take_marker(j, r, s + 10);
    return;
  }
  if (j->stopping) {
    add_notice(j, s, n);
    return;
  }
  bool bare = s[0] == '\r' || s[0] == '\n' ||
              (r == 0 && ts->to == stderr &&
               (!strncmp(s, "step ", 5) || !strncmp(s, "infer: ", 7) ||
                !strncmp(s, "autodist: trained ", 18) || !strncmp(s, "autodist: inferred ", 19)));
  if (!bare)
    fprintf(ts->to, "[%s rank %d] ", rank_node(j, r), r);
  fwrite(s, 1, n, ts->to);
}

/* Splits what mpirun wrote into per-rank lines. Each chunk a rank wrote
 * starts with its tag, and so does each line within it; text without a tag
 * is mpirun's own. */
static void tag_feed(job *j, tag_stream *ts, const char *buf, size_t n) {
  char work[4096 + sizeof ts->pend];
  memcpy(work, ts->pend, ts->n_pend);
  memcpy(work + ts->n_pend, buf, n);
  size_t total = ts->n_pend + n;
  ts->n_pend = 0;
  for (size_t i = 0; i < total;) {
    if (work[i] == '[') {
      int rank;
      size_t len;
      int m = parse_tag(work + i, total - i, &rank, &len);
      if (m == 0 && total - i < sizeof ts->pend) {
        memcpy(ts->pend, work + i, total - i);
        ts->n_pend = total - i;
        return;
      }
      if (m == 1 && rank >= 0 && rank < j->n) {
        ts->cur = rank;
        i += len;
        continue;
      }
    }
    int r = ts->cur >= 0 ? ts->cur : j->n;
    char *line = ts->lines[r];
    size_t *len = &ts->lens[r];
    line[(*len)++] = work[i];
    if (work[i] == '\n' || work[i] == '\r' || *len == sizeof ts->lines[r] - 1) {
      line[*len] = 0;
      tag_line(j, ts, r, line, *len);
      *len = 0;
      if (work[i] == '\n')
        ts->cur = -1;
    }
    i++;
  }
}

/* pump_stderr for one tagged stream. */
static void pump_tagged(job *j, int *fd, tag_stream *ts) {
  while (*fd >= 0) {
    char buf[4096];
    ssize_t got = read(*fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR)
      continue;
    if (got > 0) {
      tag_feed(j, ts, buf, (size_t)got);
      continue;
    }
    if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      for (int r = 0; r <= j->n; r++)
        if (ts->lens[r]) {
          ts->lines[r][ts->lens[r]] = 0;
          tag_line(j, ts, r, ts->lines[r], ts->lens[r]);
          ts->lens[r] = 0;
        }
      close(*fd);
      *fd = -1;
    }
    break;
  }
  fflush(ts->to);
}

/* Reads what mpirun wrote so far (non-blocking) and forwards or holds it. */
static void pump_stderr(job *j) {
  if (j->cl) {
    pump_tagged(j, &j->err_fd, &j->tags[0]);
    pump_tagged(j, &j->out_fd, &j->tags[1]);
    return;
  }
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
    if (j->ranks[r].err) {
      snprintf(msg, cap, "%s", j->ranks[r].err);
      return r;
    }
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
    if (ri->pid > 0 && !ri->done && !ri->remote && kill(ri->pid, 0) != 0 && errno == ESRCH) {
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

/* Multi-node: signals every process below this one, which are all the
 * job's since `run` is a child subreaper (mpirun, the local workers, and the
 * `__rsh` agents, which mpirun puts in process groups of their own and which
 * outlive it); returns how many there are. sig 0 only counts them. */
static int signal_descendants(int sig) {
  AD_VEC(int) pid = {0};
  AD_VEC(int) ppid = {0};
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    int p = atoi(e->d_name);
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", p);
    FILE *f = p > 0 ? fopen(path, "r") : NULL;
    if (!f)
      continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *q = strrchr(buf, ')');
    char state;
    int pp;
    if (q && sscanf(q + 1, " %c %d", &state, &pp) == 2 && state != 'Z') {
      AD_VEC_PUSH(pid, p);
      AD_VEC_PUSH(ppid, pp);
    }
  }
  if (d)
    closedir(d);
  /* Marks descendants generation by generation (ppid -> pid). */
  bool *below = ad_xcalloc((size_t)pid.len + 1, sizeof *below);
  int count = 0;
  for (bool grew = true; grew;) {
    grew = false;
    for (int i = 0; i < pid.len; i++) {
      if (below[i])
        continue;
      bool child = ppid.data[i] == getpid();
      for (int k = 0; !child && k < pid.len; k++)
        child = below[k] && pid.data[k] == ppid.data[i];
      if (child) {
        below[i] = grew = true;
        count++;
        if (sig)
          kill(pid.data[i], sig);
      }
    }
  }
  free(below);
  free(pid.data);
  free(ppid.data);
  return count;
}

static bool anything_alive(job *j) {
  if (j->mpirun)
    return true;
  for (int r = 0; r < j->n; r++)
    if (j->ranks[r].pid > 0 && !j->ranks[r].remote && is_ours(j, j->ranks[r].pid))
      return true;
  return j->cl && signal_descendants(0) > 0;
}

static void signal_all(job *j, int sig) {
  if (j->mpirun)
    kill(-j->mpirun, sig);
  for (int r = 0; r < j->n; r++)
    if (j->ranks[r].pid > 0 && !j->ranks[r].remote && is_ours(j, j->ranks[r].pid))
      kill(j->ranks[r].pid, sig);
  /* The `__rsh` agents only at the end: SIGTERM lets mpirun stop the
   * workers on the other nodes through its daemons, which the agents'
   * connections carry. */
  if (j->cl && sig == SIGKILL)
    signal_descendants(sig);
}

/* Stops whatever is left of the job: SIGTERM, then SIGKILL after 2 s; on
 * several nodes, then sweeps the other nodes for what mpirun left there. */
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
  sweep_nodes(j->cl);
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

/* Waits for mpirun's own word on a death (up to 3 s: under load 1.5 s was
 * seen to end before the notice came), so the message can name the signal. */
static void await_notice(job *j, int rank) {
  char key[64];
  snprintf(key, sizeof key, "process rank %d with PID", rank);
  double until = now_sec() + 3.0;
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

/* ---- multi-node supervision ---- */

/* The rank of the first process mpirun saw die ("mpirun noticed that process
 * rank R with PID P on node N exited on signal S", or "Process name:
 * [[J,1],R]" with an exit code); -1 when it said nothing yet. */
static int noticed_rank(const job *j) {
  const char *p = strstr(j->notices, "process rank ");
  int r, a, b;
  if (p && sscanf(p, "process rank %d", &r) == 1 && r >= 0 && r < j->n)
    return r;
  p = strstr(j->notices, "Process name: [[");
  if (p && sscanf(p, "Process name: [[%d,%d],%d]", &a, &b, &r) == 3 && r >= 0 && r < j->n)
    return r;
  return -1;
}

/* The node whose MPI daemon mpirun lost ("ORTE has lost communication with a
 * remote daemon ... Remote daemon: [[J,0],D] on node N"): the node or the
 * connection to it is gone. */
static bool lost_node(const job *j, char *out, size_t cap) {
  const char *p = strstr(j->notices, "Remote daemon:");
  if (!p || !(p = strstr(p, " on node ")))
    return false;
  p += 9;
  size_t n = strcspn(p, " \r\n");
  snprintf(out, cap, "%.*s", (int)n, p);
  return n > 0;
}

/* Whether mpirun has said that the job is failing. */
static bool mpirun_trouble(const job *j) {
  char node[256];
  return noticed_rank(j) >= 0 || lost_node(j, node, sizeof node) ||
         strstr(j->notices, "has been aborted") || strstr(j->notices, "MPI_ABORT was invoked");
}

/* Waits (up to 1.5 s) for mpirun to name the rank or node behind a failure. */
static void await_cause(job *j) {
  char node[256];
  double until = now_sec() + 1.5;
  while (now_sec() < until && noticed_rank(j) < 0 && !lost_node(j, node, sizeof node)) {
    struct pollfd pfd[2] = {{.fd = j->err_fd, .events = POLLIN},
                            {.fd = j->out_fd, .events = POLLIN}};
    poll(pfd, 2, 20);
    pump_stderr(j);
    reap_mpirun(j, WNOHANG);
    if (!j->mpirun && j->err_fd < 0 && j->out_fd < 0)
      break;
  }
}

/* What failed in a stopped multi-node job, most telling first: a worker's
 * own error, the death mpirun noticed first (the others' deaths follow from
 * it), a lost node, a local worker gone, a worker that never finished. */
static ad_status node_failure(job *j, int vanished) {
  char name[512], msg[3000], cause[64], node[256];
  int e = find_error(j, msg, sizeof msg);
  if (e >= 0)
    return ad_fail(AD_ERR_JOB, "%s: %s", who(j, e, name, sizeof name), msg);
  int r = noticed_rank(j);
  if (r < 0 && lost_node(j, node, sizeof node))
    return ad_fail(AD_ERR_JOB,
                   "error: lost the connection to node '%s' (its MPI daemon stopped answering); "
                   "the job was stopped",
                   node);
  if (r < 0)
    r = vanished;
  for (int k = 0; r < 0 && k < j->n; k++)
    if (j->ranks[k].pid > 0 && !j->ranks[k].done)
      r = k;
  if (r >= 0) {
    death_cause(j, r, cause, sizeof cause);
    return ad_fail(AD_ERR_JOB, "error: %s died (%s); the job was stopped",
                   who(j, r, name, sizeof name), cause);
  }
  if (j->notices_len)
    fputs(j->notices, stderr);
  int st = j->mpirun_status;
  return ad_fail(AD_ERR_JOB, "error: mpirun failed (%s %d) before the workers started",
                 WIFEXITED(st) ? "exit status" : "signal",
                 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* supervise() for a job on several nodes. Workers here are watched as on one
 * machine (run folder, kill(pid, 0)); workers on other nodes report through
 * marker lines, and their deaths through mpirun's notices. */
static ad_status supervise_nodes(job *j) {
  for (;;) {
    struct pollfd pfd[2] = {{.fd = j->err_fd, .events = POLLIN},
                            {.fd = j->out_fd, .events = POLLIN}};
    poll(pfd, 2, 100);
    pump_stderr(j);
    if (interrupted) {
      int sig = interrupted;
      stop_job(j);
      return ad_fail(AD_ERR_JOB, "error: interrupted by signal %d; the job was stopped", sig);
    }
    refresh_ranks(j);
    char name[512], msg[3000];
    int r = find_error(j, msg, sizeof msg);
    if (r >= 0) {
      stop_job(j);
      return ad_fail(AD_ERR_JOB, "%s: %s", who(j, r, name, sizeof name), msg);
    }
    int vanished = find_vanished(j);
    bool trouble = vanished >= 0 || mpirun_trouble(j);
    reap_mpirun(j, WNOHANG);
    if (!j->mpirun) {
      /* The rest of its output (bounded: an orphan might hold the pipes). */
      for (int i = 0; i < 50 && (j->err_fd >= 0 || j->out_fd >= 0); i++) {
        struct pollfd drain[2] = {{.fd = j->err_fd, .events = POLLIN},
                                  {.fd = j->out_fd, .events = POLLIN}};
        if (poll(drain, 2, 20) > 0)
          pump_stderr(j);
      }
      refresh_ranks(j);
      int st = j->mpirun_status, done = 0;
      for (int k = 0; k < j->n; k++)
        done += j->ranks[k].done;
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && find_error(j, msg, sizeof msg) < 0) {
        for (int i = 0; i < 100 && anything_alive(j); i++) {
          reap_orphans();
          usleep(10000);
        }
        reap_orphans();
        return AD_OK;
      }
      if (done == j->n && find_error(j, msg, sizeof msg) < 0) {
        fprintf(stderr, "autodist: warning: mpirun ended with %s %d after every worker finished\n",
                WIFEXITED(st) ? "exit status" : "signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        stop_job(j);
        return AD_OK;
      }
      trouble = true;
    }
    if (trouble) {
      await_cause(j);
      /* mpirun ends a failed job itself, removing its session folder; it
       * gets up to 2 s for that before stop_job. */
      for (double until = now_sec() + 2.0; j->mpirun && now_sec() < until;) {
        struct pollfd more[2] = {{.fd = j->err_fd, .events = POLLIN},
                                 {.fd = j->out_fd, .events = POLLIN}};
        poll(more, 2, 20);
        pump_stderr(j);
        reap_mpirun(j, WNOHANG);
      }
      refresh_ranks(j);
      stop_job(j);
      return node_failure(j, vanished >= 0 ? vanished : find_vanished(j));
    }
  }
}

/* mpirun's command line for a job on several nodes: one app context per run
 * of consecutive ranks on one node (parameter servers may sit on any node),
 * each with --host NODE:SLOTS. Workers here get run's own arguments; workers
 * on another node get the staged plan and data there instead. The
 * remote-shell agent is `autodist __rsh` (runtime/rsh.c); no tree spawn, so
 * only the chief starts daemons. A dead process is killed at once
 * (odls_base_sigkill_timeout 0), so mpirun names it without a 3 s grace.
 *
 * The daemons stay in their ssh session (orte_leave_session_attached)
 * instead of daemonizing: the agent's lifeline then covers them, their
 * errors come back on the agent's stderr, and a daemon that dies before it
 * reports to mpirun ends its agent with a failure that mpirun acts on. A
 * daemonizing orted whose parent has exited is out of sight: when it died
 * between its fork and its setsid (the lifeline's SIGTERM to the session
 * could catch it there under load), mpirun waited for it forever. */
static char **node_args(const job *j, const char *exe, int argc, char **argv) {
  const cluster *c = j->cl;
  AD_VEC(char *) a = {0};
  const char *fixed[] = {"mpirun", "--allow-run-as-root", "--bind-to", "none", "--tag-output"};
  for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
    AD_VEC_PUSH(a, ad_xstrdup(fixed[i]));
  char agent[4200];
  snprintf(agent, sizeof agent, "%s __rsh", exe);
  const char *mca[][2] = {{"btl", "self,vader,tcp"},
                          {"btl_vader_single_copy_mechanism", "none"},
                          {"plm_rsh_agent", agent},
                          {"plm_rsh_no_tree_spawn", "1"},
                          {"orte_leave_session_attached", "1"},
                          {"odls_base_sigkill_timeout", "0"},
                          {"autodist_job", c->job_id},
                          {"btl_tcp_if_include", "lo"},
                          {"oob_tcp_if_include", "lo"},
                          {"mpi_yield_when_idle", "1"}};
  /* Loopback addresses only (a test, or nodes on one machine): MPI's TCP
   * must stay on lo, and since the "nodes" share this machine's cores, a
   * waiting process yields them (OpenMPI only knows each node's slots, not
   * that they are the same cores). Otherwise OpenMPI picks the interfaces. */
  size_t n_mca = sizeof mca / sizeof *mca - (c->loopback ? 0 : 3);
  for (size_t i = 0; i < n_mca; i++) {
    AD_VEC_PUSH(a, ad_xstrdup("--mca"));
    AD_VEC_PUSH(a, ad_xstrdup(mca[i][0]));
    AD_VEC_PUSH(a, ad_xstrdup(mca[i][1]));
  }
  const ad_plan *plan = j->plan;
  const char **node_of = ad_xcalloc((size_t)j->n + 1, sizeof *node_of);
  for (int i = 0; i < plan->n_devices; i++) {
    AD_ASSERT(plan->devices[i].rank >= 0 && plan->devices[i].rank < j->n);
    node_of[plan->devices[i].rank] = plan->devices[i].node;
  }
  for (int r = 0; r < j->n;) {
    const char *node = node_of[r];
    int k = r, slots = 0;
    while (k < j->n && !strcmp(node_of[k], node))
      k++;
    for (int i = 0; i < j->n; i++)
      slots += !strcmp(node_of[i], node);
    const remote_node *rn = NULL;
    for (int i = 0; i < c->n; i++)
      if (!strcmp(c->nodes[i].node->address, node))
        rn = &c->nodes[i];
    char num[32], host[512];
    snprintf(num, sizeof num, "%d", k - r);
    snprintf(host, sizeof host, "%s:%d", node, slots);
    const char *head[] = {"-np", num,      "--host", host,       "-x",    "AD_MARKERS",
                          "-x",  "AD_TTY", exe,      "__worker", "--job", c->job_id};
    if (r)
      AD_VEC_PUSH(a, ad_xstrdup(":"));
    for (size_t i = 0; i < sizeof head / sizeof *head; i++)
      AD_VEC_PUSH(a, ad_xstrdup(head[i]));
    /* run's arguments, as data.c parses them: the plan is the one word that
     * is no option or option value; --data values name the staged files. */
    for (int i = 1, n_data = 0; i < argc; i++) {
      const char *w = argv[i];
      bool flag = !strcmp(w, "--accept-new-hosts") || !strcmp(w, "--resume");
      if (w[0] != '-' || !w[1]) {
        AD_VEC_PUSH(a, ad_xstrdup(rn ? rn->plan_dir : w));
        continue;
      }
      AD_VEC_PUSH(a, ad_xstrdup(w));
      if (flag || i + 1 >= argc)
        continue;
      const char *v = argv[++i];
      if (rn && !strcmp(w, "--data")) {
        size_t len = strcspn(v, "=") + 1 + strlen(rn->data[n_data]) + 1;
        char *bind = ad_xmalloc(len);
        snprintf(bind, len, "%.*s=%s", (int)strcspn(v, "="), v, rn->data[n_data]);
        AD_VEC_PUSH(a, bind);
      } else {
        AD_VEC_PUSH(a, ad_xstrdup(v));
      }
      n_data += !strcmp(w, "--data");
    }
    r = k;
  }
  free(node_of);
  AD_VEC_PUSH(a, NULL);
  return a.data;
}

/* Starts mpirun in a process group of its own, stderr into a pipe (on
 * several nodes stdout too, for the rank tags). */
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
  char **node_argv = j->cl ? node_args(j, exe, argc, argv) : NULL;

  int fds[2], outs[2] = {-1, -1};
  if (pipe2(fds, O_CLOEXEC) != 0 || (j->cl && pipe2(outs, O_CLOEXEC) != 0)) {
    for (char **w = node_argv; w && *w; w++)
      free(*w);
    free(node_argv);
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
    if (j->cl) {
      /* For the workers on other nodes (-x) and for `__rsh`. */
      dup2(outs[1], 1);
      setenv("AD_MARKERS", "1", 1);
      setenv("AD_PLAN_DIR", j->cl->plan_abs, 1);
      if (j->cl->accept_new)
        setenv("AD_ACCEPT_NEW_HOSTS", "1", 1);
      else
        unsetenv("AD_ACCEPT_NEW_HOSTS");
    }
    execvp("mpirun", node_argv ? node_argv : args);
    fprintf(stderr, "autodist: error: cannot run mpirun: %s\n", strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid); /* also here: no window where a signal reaches the wrong group */
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  if (j->cl) {
    close(outs[1]);
    fcntl(outs[0], F_SETFL, O_NONBLOCK);
    j->out_fd = outs[0];
  }
  for (char **w = node_argv; w && *w; w++)
    free(*w);
  free(node_argv);
  free(args);
  j->mpirun = j->mpirun_pid = pid;
  j->err_fd = fds[0];
  return AD_OK;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)remove(path); /* best effort: go on */
  return 0;
}

/* mpirun's session folder, when mpirun was killed before it could remove it
 * ($TMPDIR/ompi.HOST.UID/pid.PID, OpenMPI 4), and its parent if empty. */
static void remove_session_dir(const job *j) {
  if (!j->mpirun_pid)
    return;
  const char *base = getenv("OMPI_MCA_orte_tmpdir_base");
  if (!base || !*base)
    base = getenv("TMPDIR");
  if (!base || !*base)
    base = "/tmp";
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  host[strcspn(host, ".")] = 0;
  char top[4500], dir[4600];
  snprintf(top, sizeof top, "%s/ompi.%s.%u", base, host, (unsigned)getuid());
  snprintf(dir, sizeof dir, "%s/pid.%d", top, (int)j->mpirun_pid);
  struct stat st;
  if (stat(dir, &st) != 0)
    return; /* mpirun removed it */
  nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  rmdir(top);
}

/* After a failed inference job: the --out files rank 0 was writing (on this
 * machine, the chief) are removed, so that no half-written output remains. */
static void remove_partial_outputs(const job *j, const ad_run_opts *o) {
  for (int i = 0; i < o->n_out; i++) {
    char *tmp = ad_out_tmp_path(o->out[i].path, j->run_dir);
    unlink(tmp);
    free(tmp);
  }
}

static ad_status run_job(const ad_plan *plan, const cluster *cl, const ad_run_opts *opts, int argc,
                         char **argv) {
  job j = {.plan = plan, .err_fd = -1, .out_fd = -1, .n = plan->n_devices};
  const char *tmp = getenv("TMPDIR");
  snprintf(j.run_dir, sizeof j.run_dir, "%s/autodist-run.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(j.run_dir))
    return ad_fail(AD_ERR_JOB, "error: cannot create a run folder in %s: %s",
                   tmp && *tmp ? tmp : "/tmp", strerror(errno));
  j.ranks = ad_xcalloc((size_t)j.n, sizeof *j.ranks);
  if (cl && cl->n) {
    j.cl = cl;
    for (int k = 0; k < 2; k++)
      j.tags[k] = (tag_stream){.to = k ? stdout : stderr,
                               .cur = -1,
                               .lines = ad_xcalloc((size_t)j.n + 1, sizeof *j.tags[k].lines),
                               .lens = ad_xcalloc((size_t)j.n + 1, sizeof *j.tags[k].lens)};
  }

  struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  prctl(PR_SET_CHILD_SUBREAPER, 1);

  ad_status st = start_mpirun(&j, argc, argv);
  if (st == AD_OK)
    st = j.cl ? supervise_nodes(&j) : supervise(&j);
  if (j.err_fd >= 0)
    close(j.err_fd);
  if (j.out_fd >= 0)
    close(j.out_fd);
  remove_partial_outputs(&j, opts);
  remove_run_dir(&j);
  if (j.cl)
    remove_session_dir(&j);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  for (int r = 0; r < j.n; r++)
    free(j.ranks[r].err);
  free(j.ranks);
  for (int k = 0; k < 2; k++) {
    free(j.tags[k].lines);
    free(j.tags[k].lens);
  }
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
  if (st != AD_OK) {
    ad_run_opts_free(&opts);
    return st;
  }
  /* Other nodes: checked and staged before anything starts; Ctrl-C while
   * that goes on ends it cleanly. */
  interrupted = 0;
  cluster cl;
  st = cluster_init(&cl, plan, &opts);
  if (st == AD_OK && cl.n) {
    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    st = stage_nodes(&cl, plan, &opts);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
  }
  if (st == AD_OK)
    st = run_job(plan, &cl, &opts, argc, argv);
  ad_run_opts_free(&opts);
  cluster_free(&cl);
  ad_plan_free(plan);
  return st;
}
