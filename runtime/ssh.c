/*
 * runtime/ssh.c: the SSH client behind `autodist run` and `autodist __rsh`
 * (runtime/ssh.h), on libssh.
 *
 * It behaves like OpenSSH where a user would notice: host keys are checked
 * against known_hosts (an unknown key is refused unless the caller accepts new
 * hosts, which records it like StrictHostKeyChecking=accept-new; a changed key
 * is always refused), ~/.ssh/config is not read (the plan is the whole
 * configuration), and a remote command's exit status comes back as the exit
 * code (128 + N for a signal, as a shell reports it).
 *
 * Nothing may hang: connecting, the handshake, authentication and SFTP calls
 * time out after CONNECT_TIMEOUT_S; a running command is followed with an
 * ssh_event poll loop, never with a blocking read, so that its stdin, both
 * output streams and a terminating signal are served as they come.
 *
 * Signals: while ad_ssh_exec runs, SIGTERM, SIGHUP and SIGINT (unless the
 * caller ignores them) are caught and sent on to the remote command (the
 * "signal" channel request; sshd then signals the command's process group),
 * with an EOF on its stdin, because closing the connection alone does not
 * stop a command that has no terminal. sshd refuses the request after a root
 * login, so a command that must not outlive us watches its stdin as well
 * (runtime/rsh.c does). The command gets SIGNAL_GRACE_MS to end; then the
 * caller's own disposition is put back and the signal raised again, so the
 * process ends (or its handler runs) as if ssh.c had not been there.
 */
#include "ssh.h"

#include <errno.h>
#include <fcntl.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/sftp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_S 5L
/* After a forwarded signal, how long to wait for the remote command to end
 * before the channel is closed anyway. */
#define SIGNAL_GRACE_MS 2000

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct ad_ssh {
  ssh_session session;
  char *node;
};

/* ---- helpers ---- */

/* mkdir -p of the folder holding `path` (mode 0700, like ~/.ssh). */
static void make_parent_dirs(const char *path) {
  char *p = ad_xstrdup(path);
  for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
    *s = 0;
    mkdir(p, 0700);
    *s = '/';
  }
  free(p);
}

char *ad_shell_quote(const char *s) {
  size_t n = 3;
  for (const char *p = s; *p; p++)
    n += *p == '\'' ? 4 : 1;
  char *q = ad_xmalloc(n), *o = q;
  *o++ = '\'';
  for (const char *p = s; *p; p++) {
    if (*p == '\'') {
      memcpy(o, "'\\''", 4);
      o += 4;
    } else {
      *o++ = *p;
    }
  }
  *o++ = '\'';
  *o = 0;
  return q;
}

/* OpenSSH's names for key types in fingerprints ("ED25519 SHA256:..."). */
static const char *key_type_name(enum ssh_keytypes_e t) {
  switch (t) {
  case SSH_KEYTYPE_ED25519:
    return "ED25519";
  case SSH_KEYTYPE_RSA:
    return "RSA";
  case SSH_KEYTYPE_ECDSA_P256:
  case SSH_KEYTYPE_ECDSA_P384:
  case SSH_KEYTYPE_ECDSA_P521:
    return "ECDSA";
  case SSH_KEYTYPE_DSS:
    return "DSA";
  default: {
    const char *s = ssh_key_type_to_char(t);
    return s ? s : "unknown";
  }
  }
}

/* ---- connect ---- */

/* The private key named by key_file, read before any connection so that a
 * configuration mistake is reported as one whether or not the node is up. */
static ad_status load_key(const char *node, const char *path, ssh_key *out) {
  if (access(path, R_OK) != 0)
    return ad_fail(AD_ERR_INPUT, "error: node '%s': cannot read key_file '%s': %s", node, path,
                   strerror(errno));
  if (ssh_pki_import_privkey_file(path, NULL, NULL, NULL, out) != SSH_OK)
    return ad_fail(AD_ERR_INPUT,
                   "error: node '%s': key_file '%s' is not a private key that can be used "
                   "without a passphrase (for a key with a passphrase, leave key_file out and "
                   "load the key into ssh-agent)",
                   node, path);
  return AD_OK;
}

/* Host-key check, OpenSSH's way. `kh_shown` is the known_hosts file as the
 * user wrote it (for messages), `kh_path` the same with ~ expanded. */
static ad_status check_host_key(ssh_session s, const char *node, int port, bool accept_new,
                                const char *kh_shown, const char *kh_path) {
  ssh_key srv = NULL;
  if (ssh_get_server_publickey(s, &srv) != SSH_OK)
    return ad_fail(AD_ERR_JOB, "error: node '%s': no host key from the server: %s", node,
                   ssh_get_error(s));
  unsigned char *hash = NULL;
  size_t hash_len = 0;
  char *fp = NULL;
  if (ssh_get_publickey_hash(srv, SSH_PUBLICKEY_HASH_SHA256, &hash, &hash_len) == 0)
    fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hash_len);
  char shown[512];
  snprintf(shown, sizeof shown, "%s %s", key_type_name(ssh_key_type(srv)), fp ? fp : "?");
  ssh_clean_pubkey_hash(&hash);
  ssh_string_free_char(fp);
  ssh_key_free(srv);

  /* known_hosts names a host on another port "[host]:port". */
  char host_spec[300];
  if (port == 22)
    snprintf(host_spec, sizeof host_spec, "%s", node);
  else
    snprintf(host_spec, sizeof host_spec, "[%s]:%d", node, port);

  switch (ssh_session_is_known_server(s)) {
  case SSH_KNOWN_HOSTS_OK:
    return AD_OK;
  case SSH_KNOWN_HOSTS_NOT_FOUND: /* no known_hosts file yet */
  case SSH_KNOWN_HOSTS_UNKNOWN:
    if (!accept_new)
      return ad_fail(AD_ERR_INPUT,
                     "error: node '%s': unknown host key (%s); check it and run again with "
                     "--accept-new-hosts to record it in %s",
                     node, shown, kh_shown);
    make_parent_dirs(kh_path);
    if (ssh_session_update_known_hosts(s) != SSH_OK)
      return ad_fail(AD_ERR_INPUT, "error: node '%s': cannot record its host key in %s: %s", node,
                     kh_shown, ssh_get_error(s));
    fprintf(stderr, "autodist: node '%s': recorded its host key (%s) in %s\n", node, shown,
            kh_shown);
    return AD_OK;
  case SSH_KNOWN_HOSTS_CHANGED:
  case SSH_KNOWN_HOSTS_OTHER:
    return ad_fail(AD_ERR_INPUT,
                   "error: node '%s': host key has CHANGED (possible man-in-the-middle); if the "
                   "node was reinstalled, remove its line from %s (ssh-keygen -R '%s' -f %s)",
                   node, kh_shown, host_spec, kh_path);
  case SSH_KNOWN_HOSTS_ERROR:
  default:
    return ad_fail(AD_ERR_INPUT, "error: node '%s': cannot check its host key against %s: %s", node,
                   kh_shown, ssh_get_error(s));
  }
}

static ad_status authenticate(ssh_session s, const char *node, ssh_key key, const char *key_path) {
  int rc;
  if (key) {
    rc = ssh_userauth_publickey(s, NULL, key);
  } else {
    const char *sock = getenv("SSH_AUTH_SOCK");
    if (!sock || !*sock)
      return ad_fail(AD_ERR_INPUT,
                     "error: node '%s': no key_file and no ssh-agent ($SSH_AUTH_SOCK is not "
                     "set); set key_file in its ssh group or start ssh-agent",
                     node);
    rc = ssh_userauth_agent(s, NULL);
  }
  if (rc == SSH_AUTH_SUCCESS)
    return AD_OK;
  if (rc == SSH_AUTH_ERROR && ssh_get_error_code(s) == SSH_FATAL)
    return ad_fail(AD_ERR_JOB, "error: node '%s': connection lost while authenticating: %s", node,
                   ssh_get_error(s));
  char *user = NULL;
  ssh_options_get(s, SSH_OPTIONS_USER, &user);
  char with[1100];
  if (key_path)
    snprintf(with, sizeof with, "key %s", key_path);
  else
    snprintf(with, sizeof with, "keys of the ssh-agent");
  ad_fail(AD_ERR_INPUT,
          "error: node '%s': authentication as '%s' failed (%s); check username and key_file in "
          "its ssh group",
          node, user ? user : "?", with);
  ssh_string_free_char(user);
  return AD_ERR_INPUT;
}

ad_status ad_ssh_connect(const ad_ssh_target *t, bool accept_new, ad_ssh **out) {
  *out = NULL;
  const char *node = t->node;
  int port = t->port ? t->port : 22;
  const char *kh_shown = t->known_hosts ? t->known_hosts : "~/.ssh/known_hosts";
  char *kh_path = ad_expand_home(kh_shown);
  char *key_path = t->key_file ? ad_expand_home(t->key_file) : NULL;
  ssh_key key = NULL;
  ssh_session s = NULL;
  ad_status st = key_path ? load_key(node, key_path, &key) : AD_OK;
  if (st == AD_OK) {
    s = ssh_new();
    AD_ASSERT(s);
    long timeout = CONNECT_TIMEOUT_S;
    int verbosity = SSH_LOG_NOLOG, no = 0;
    unsigned int uport = (unsigned int)port;
    ssh_options_set(s, SSH_OPTIONS_LOG_VERBOSITY, &verbosity);
    ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no);
    ssh_options_set(s, SSH_OPTIONS_PORT, &uport);
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout);
    ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, kh_path);
    if (ssh_options_set(s, SSH_OPTIONS_HOST, node) != SSH_OK)
      st = ad_fail(AD_ERR_INPUT, "error: node '%s': not a valid host name: %s", node,
                   ssh_get_error(s));
    else if (t->username && ssh_options_set(s, SSH_OPTIONS_USER, t->username) != SSH_OK)
      st = ad_fail(AD_ERR_INPUT, "error: node '%s': invalid username '%s': %s", node, t->username,
                   ssh_get_error(s));
  }
  if (st == AD_OK && ssh_connect(s) != SSH_OK)
    st = ad_fail(AD_ERR_JOB, "error: node '%s' port %d is unreachable: %s", node, port,
                 ssh_get_error(s));
  if (st == AD_OK)
    st = check_host_key(s, node, port, accept_new, kh_shown, kh_path);
  if (st == AD_OK)
    st = authenticate(s, node, key, key_path);
  ssh_key_free(key);
  free(key_path);
  free(kh_path);
  if (st != AD_OK) {
    if (s) {
      ssh_disconnect(s);
      ssh_free(s);
    }
    return st;
  }
  ad_ssh *c = ad_xcalloc(1, sizeof *c);
  c->session = s;
  c->node = ad_xstrdup(node);
  *out = c;
  return AD_OK;
}

const char *ad_ssh_node(const ad_ssh *s) {
  return s->node;
}

void ad_ssh_close(ad_ssh *s) {
  if (!s)
    return;
  ssh_disconnect(s->session);
  ssh_free(s->session);
  free(s->node);
  free(s);
}

/* ---- signals during ad_ssh_exec ---- */

static const int forwarded[] = {SIGTERM, SIGHUP, SIGINT};
#define N_FORWARDED ((int)(sizeof forwarded / sizeof *forwarded))

/* Installed while at least one ad_ssh_exec runs (in any thread); the handler
 * records the signal and wakes every exec's poll() through the pipe. */
static pthread_mutex_t sig_mu = PTHREAD_MUTEX_INITIALIZER;
static int sig_users;
static struct sigaction sig_old[N_FORWARDED];
static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t sig_caught;

static void on_signal(int sig) {
  int e = errno;
  sig_caught = sig;
  if (write(sig_pipe[1], "", 1) < 0) {
    /* the pipe is full: a wake-up is already pending */
  }
  errno = e;
}

static void signals_catch(void) {
  pthread_mutex_lock(&sig_mu);
  if (sig_users++ == 0) {
    AD_ASSERT(pipe(sig_pipe) == 0);
    for (int i = 0; i < 2; i++) {
      fcntl(sig_pipe[i], F_SETFL, O_NONBLOCK);
      fcntl(sig_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    sig_caught = 0;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    /* A signal the caller ignores (nohup, a background job's SIGINT) stays
     * ignored. */
    for (int i = 0; i < N_FORWARDED; i++) {
      sigaction(forwarded[i], NULL, &sig_old[i]);
      if (sig_old[i].sa_handler != SIG_IGN)
        sigaction(forwarded[i], &sa, NULL);
    }
  }
  pthread_mutex_unlock(&sig_mu);
}

/* The last exec out puts the caller's dispositions back and, when a signal
 * came meanwhile, raises it again for them. */
static void signals_release(void) {
  pthread_mutex_lock(&sig_mu);
  if (--sig_users == 0) {
    for (int i = 0; i < N_FORWARDED; i++)
      sigaction(forwarded[i], &sig_old[i], NULL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    sig_pipe[0] = sig_pipe[1] = -1;
    int sig = sig_caught;
    sig_caught = 0;
    pthread_mutex_unlock(&sig_mu);
    if (sig)
      raise(sig);
    return;
  }
  pthread_mutex_unlock(&sig_mu);
}

static const struct {
  const char *name;
  int sig;
} signal_names[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"ILL", SIGILL},
                    {"ABRT", SIGABRT}, {"FPE", SIGFPE},   {"KILL", SIGKILL}, {"SEGV", SIGSEGV},
                    {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM}, {"USR1", SIGUSR1},
                    {"USR2", SIGUSR2}, {"BUS", SIGBUS},   {"TRAP", SIGTRAP}, {"SYS", SIGSYS}};

static const char *signal_name(int sig) {
  for (size_t i = 0; i < sizeof signal_names / sizeof *signal_names; i++)
    if (signal_names[i].sig == sig)
      return signal_names[i].name;
  return "TERM";
}

/* RFC 4254 names signals without "SIG"; an unknown one counts as 127 (exit
 * code 255, what OpenSSH's client returns when it cannot tell). */
static int signal_number(const char *name) {
  if (!strncmp(name, "SIG", 3))
    name += 3;
  for (size_t i = 0; i < sizeof signal_names / sizeof *signal_names; i++)
    if (!strcmp(signal_names[i].name, name))
      return signal_names[i].sig;
  return 127;
}

/* ---- exec ---- */

typedef struct exec_state {
  bool got_exit;
  int exit_code;
} exec_state;

static void on_exit_status(ssh_session s, ssh_channel c, int status, void *u) {
  exec_state *e = u;
  e->got_exit = true;
  e->exit_code = status & 0xff;
}

static void on_exit_signal(ssh_session s, ssh_channel c, const char *sig, int core,
                           const char *errmsg, const char *lang, void *u) {
  exec_state *e = u;
  e->got_exit = true;
  e->exit_code = 128 + signal_number(sig ? sig : "");
}

/* Reads what both streams hold now into the sink, at most 16 blocks each so
 * that a chatty command cannot keep the loop from stdin and signals. Returns
 * the bytes read or SSH_ERROR. */
static int drain(ssh_channel ch, ad_ssh_sink sink, void *ctx) {
  char buf[16384];
  int total = 0;
  for (int is_stderr = 0; is_stderr < 2; is_stderr++) {
    for (int k = 0; k < 16; k++) {
      int n = ssh_channel_read_nonblocking(ch, buf, sizeof buf, is_stderr);
      if (n == SSH_ERROR)
        return SSH_ERROR;
      if (n <= 0)
        break;
      if (sink)
        sink(ctx, is_stderr ? 2 : 1, buf, (size_t)n);
      total += n;
    }
  }
  return total;
}

static ad_status lost(ad_ssh *s) {
  return ad_fail(AD_ERR_JOB, "error: node '%s': connection lost: %s", s->node,
                 ssh_get_error(s->session));
}

/* ssh_event callback for our own descriptors (stdin, the signal pipe): only
 * notes that one is ready; the loop acts on it. */
static int on_ready(socket_t fd, int revents, void *u) {
  *(bool *)u = true;
  return 0;
}

/* The loop of ad_ssh_exec: output to the sink, stdin_fd to the command (no
 * more than the channel's window at a time, so a write never blocks), until
 * the command has exited and its output is drained. A caught signal is sent
 * to the command, which then has SIGNAL_GRACE_MS to end.
 *
 * Packets are processed by ssh_event_dopoll, not by the reads: once the
 * remote end sent EOF, libssh's channel reads stop processing packets, and
 * the exit status and close that follow would never be seen. */
static ad_status follow(ad_ssh *s, ssh_event ev, ssh_channel ch, int stdin_fd, ad_ssh_sink sink,
                        void *ctx, exec_state *e) {
  char in[16384];
  size_t in_len = 0, in_off = 0;
  bool in_open = stdin_fd >= 0, in_watched = false, in_ready = false, sig_ready = false;
  bool eof_sent = !in_open && ssh_channel_send_eof(ch) == SSH_OK;
  int signalled = 0;
  long deadline = 0;
  ssh_event_add_fd(ev, sig_pipe[0], POLLIN, on_ready, &sig_ready);
  ad_status st = AD_OK;
  for (;;) {
    int n = drain(ch, sink, ctx);
    if (n == SSH_ERROR) {
      st = lost(s);
      break;
    }
    if (n == 0 && (ssh_channel_is_closed(ch) || (ssh_channel_is_eof(ch) && e->got_exit)))
      break;
    if (!ssh_is_connected(s->session)) {
      st = lost(s);
      break;
    }
    if (sig_caught && !signalled) {
      signalled = sig_caught;
      /* sshd refuses the request for root (no privilege separation after a
       * root login); the EOF also tells a command that watches its stdin,
       * as `__rsh`'s does. */
      ssh_channel_request_send_signal(ch, signal_name(signalled));
      in_open = false;
      in_len = in_off = 0;
      if (!eof_sent)
        eof_sent = ssh_channel_send_eof(ch) == SSH_OK;
      ssh_blocking_flush(s->session, 1000);
      deadline = now_ms() + SIGNAL_GRACE_MS;
    }
    if (signalled && now_ms() >= deadline)
      break;
    if (sig_ready) {
      char b[64];
      while (read(sig_pipe[0], b, sizeof b) > 0) {
      }
      sig_ready = false;
    }
    /* stdin: read a block when the last one is sent; at its end, EOF. */
    if (in_ready) {
      in_ready = false;
      ssize_t k = read(stdin_fd, in, sizeof in);
      if (k > 0) {
        in_len = (size_t)k;
        in_off = 0;
      } else if (k == 0 || (errno != EINTR && errno != EAGAIN)) {
        in_open = false;
        eof_sent = ssh_channel_send_eof(ch) == SSH_OK;
      }
    }
    if (in_off < in_len) {
      uint32_t win = ssh_channel_window_size(ch);
      size_t k = in_len - in_off < win ? in_len - in_off : win;
      int w = k > 0 ? ssh_channel_write(ch, in + in_off, (uint32_t)k) : 0;
      if (w == SSH_ERROR) {
        st = lost(s);
        break;
      }
      in_off += (size_t)w;
    }
    bool want_in = in_open && in_off == in_len;
    if (want_in != in_watched) {
      if (want_in)
        ssh_event_add_fd(ev, stdin_fd, POLLIN, on_ready, &in_ready);
      else
        ssh_event_remove_fd(ev, stdin_fd);
      in_watched = want_in;
    }
    /* Output just came: look again at once, but serve stdin and signals in
     * between. */
    ssh_event_dopoll(ev, n > 0 ? 0 : signalled ? 100 : 1000);
  }
  if (in_watched)
    ssh_event_remove_fd(ev, stdin_fd);
  ssh_event_remove_fd(ev, sig_pipe[0]);
  if (st != AD_OK)
    return st;
  if (signalled)
    return ad_fail(AD_ERR_JOB,
                   "error: node '%s': interrupted by signal %d; sent it to the remote command",
                   s->node, signalled);
  if (!e->got_exit)
    return ad_fail(AD_ERR_JOB, "error: node '%s': the remote command ended without an exit status",
                   s->node);
  return AD_OK;
}

ad_status ad_ssh_exec(ad_ssh *s, const char *command, int stdin_fd, ad_ssh_sink sink, void *ctx,
                      int *exit_code) {
  *exit_code = -1;
  ssh_channel ch = ssh_channel_new(s->session);
  if (!ch || ssh_channel_open_session(ch) != SSH_OK) {
    ad_status st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot open a session: %s", s->node,
                           ssh_get_error(s->session));
    ssh_channel_free(ch);
    return st;
  }
  exec_state e = {0};
  struct ssh_channel_callbacks_struct cb = {.userdata = &e,
                                            .channel_exit_status_function = on_exit_status,
                                            .channel_exit_signal_function = on_exit_signal};
  ssh_callbacks_init(&cb);
  ssh_set_channel_callbacks(ch, &cb);
  signals_catch();
  ad_status st = AD_OK;
  if (ssh_channel_request_exec(ch, command) != SSH_OK)
    st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot start the command: %s", s->node,
                 ssh_get_error(s->session));
  if (st == AD_OK) {
    ssh_event ev = ssh_event_new();
    AD_ASSERT(ev && ssh_event_add_session(ev, s->session) == SSH_OK);
    st = follow(s, ev, ch, stdin_fd, sink, ctx, &e);
    ssh_event_remove_session(ev, s->session);
    ssh_event_free(ev);
  }
  if (st == AD_OK)
    *exit_code = e.exit_code;
  if (ssh_channel_is_open(ch))
    ssh_channel_close(ch);
  ssh_blocking_flush(s->session, 1000);
  ssh_channel_free(ch);
  signals_release();
  return st;
}

/* ---- upload ---- */

static const char *sftp_reason(sftp_session sf, ad_ssh *s) {
  switch (sftp_get_error(sf)) {
  case SSH_FX_NO_SUCH_FILE:
    return "No such file or directory";
  case SSH_FX_PERMISSION_DENIED:
    return "Permission denied";
  case SSH_FX_FILE_ALREADY_EXISTS:
    return "File exists";
  default:
    return ssh_get_error(s->session);
  }
}

/* mkdir -p on the node for the folders above `remote`. */
static ad_status sftp_mkdirs(ad_ssh *s, sftp_session sf, const char *remote) {
  char *p = ad_xstrdup(remote);
  ad_status st = AD_OK;
  for (char *q = strchr(p + 1, '/'); q && st == AD_OK; q = strchr(q + 1, '/')) {
    *q = 0;
    sftp_attributes a = sftp_stat(sf, p);
    if (a) {
      bool dir = a->type == SSH_FILEXFER_TYPE_DIRECTORY;
      sftp_attributes_free(a);
      if (!dir)
        st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot create folder %s: not a folder", s->node,
                     p);
    } else if (sftp_mkdir(sf, p, 0755) != 0 && sftp_get_error(sf) != SSH_FX_FILE_ALREADY_EXISTS) {
      /* another upload may have made it meanwhile */
      a = sftp_stat(sf, p);
      if (!a)
        st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot create folder %s: %s", s->node, p,
                     sftp_reason(sf, s));
      sftp_attributes_free(a);
    }
    *q = '/';
  }
  free(p);
  return st;
}

static ad_status copy_to(ad_ssh *s, sftp_session sf, int fd, const char *tmp, mode_t mode) {
  sftp_file f = sftp_open(sf, tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
  if (!f)
    return ad_fail(AD_ERR_JOB, "error: node '%s': cannot create %s: %s", s->node, tmp,
                   sftp_reason(sf, s));
  ad_status st = AD_OK;
  char buf[32768];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      st = ad_fail(AD_ERR_INPUT, "error: cannot read the file to upload: %s", strerror(errno));
      break;
    }
    if (n == 0)
      break;
    for (ssize_t off = 0; off < n && st == AD_OK;) {
      ssize_t w = sftp_write(f, buf + off, (size_t)(n - off));
      if (w <= 0)
        st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot write %s: %s", s->node, tmp,
                     sftp_reason(sf, s));
      else
        off += w;
    }
    if (st != AD_OK)
      break;
  }
  if (sftp_close(f) != SSH_NO_ERROR && st == AD_OK)
    st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot write %s: %s", s->node, tmp,
                 sftp_reason(sf, s));
  return st;
}

ad_status ad_ssh_upload(ad_ssh *s, const char *local, const char *remote) {
  AD_ASSERT(remote[0] == '/');
  int fd = open(local, O_RDONLY | O_CLOEXEC);
  struct stat lst;
  if (fd < 0 || fstat(fd, &lst) != 0) {
    ad_status st = ad_fail(AD_ERR_INPUT, "%s: error: cannot open: %s", local, strerror(errno));
    if (fd >= 0)
      close(fd);
    return st;
  }
  sftp_session sf = sftp_new(s->session);
  if (!sf || sftp_init(sf) != SSH_OK) {
    ad_status st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot start SFTP: %s", s->node,
                           ssh_get_error(s->session));
    sftp_free(sf);
    close(fd);
    return st;
  }
  size_t n = strlen(remote) + 32;
  char *tmp = ad_xmalloc(n);
  snprintf(tmp, n, "%s.tmp%ld", remote, (long)getpid());
  ad_status st = sftp_mkdirs(s, sf, remote);
  if (st == AD_OK)
    st = copy_to(s, sf, fd, tmp, lst.st_mode & 0777);
  close(fd);
  /* SFTP v3's rename (OpenSSH's) refuses an existing target: then `mv -f`,
   * which renames atomically all the same. */
  if (st == AD_OK && sftp_rename(sf, tmp, remote) != 0) {
    char *qt = ad_shell_quote(tmp), *qr = ad_shell_quote(remote);
    size_t len = strlen(qt) + strlen(qr) + 16;
    char *cmd = ad_xmalloc(len);
    snprintf(cmd, len, "mv -f -- %s %s", qt, qr);
    int code;
    st = ad_ssh_exec(s, cmd, -1, NULL, NULL, &code);
    if (st == AD_OK && code != 0)
      st = ad_fail(AD_ERR_JOB, "error: node '%s': cannot move %s into place as %s (mv exit %d)",
                   s->node, tmp, remote, code);
    free(cmd);
    free(qt);
    free(qr);
  }
  if (st != AD_OK)
    sftp_unlink(sf, tmp); /* best effort: no half file left behind */
  free(tmp);
  sftp_free(sf);
  return st;
}
