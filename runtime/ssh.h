/*
 * runtime/ssh.h: the launcher's SSH client (libssh): connect to a node with
 * its ssh_config group, check its host key like OpenSSH, authenticate, run
 * commands and upload files over SFTP. Used by `autodist run` to stage a plan
 * on each node, and by `autodist __rsh`, the remote-shell agent through which
 * mpirun starts its daemons on the other nodes.
 *
 * Exit codes (DESIGN.md): a node that cannot be reached is a job failure
 * (AD_ERR_JOB, exit 1); a refused host key or a failed authentication is a
 * configuration error (AD_ERR_INPUT, exit 2). Every message names the node and
 * says how to fix it.
 */
#ifndef AD_SSH_H
#define AD_SSH_H

#include "../common/ad.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct ad_ssh ad_ssh;

typedef struct ad_ssh_target {
  const char *node;        /* address (host name or IP) */
  const char *username;    /* NULL: the current user */
  int port;                /* 0: 22 */
  const char *key_file;    /* NULL: the ssh-agent ($SSH_AUTH_SOCK) */
  const char *known_hosts; /* NULL: ~/.ssh/known_hosts */
} ad_ssh_target;

/* Connects (within a few seconds, never hanging), checks the host key against
 * known_hosts (unknown: refused unless accept_new, which records it like
 * OpenSSH's accept-new; changed: always refused) and authenticates. */
ad_status ad_ssh_connect(const ad_ssh_target *t, bool accept_new, ad_ssh **out);

/* Output sink of ad_ssh_exec: fd 1 (stdout) or 2 (stderr) of the remote
 * command, n bytes at buf. */
typedef void (*ad_ssh_sink)(void *ctx, int fd, const char *buf, size_t n);

/* Runs `command` through the remote user's shell, passing its output to sink
 * (NULL: discarded) as it arrives and, when stdin_fd >= 0, copying stdin_fd to
 * its standard input. *exit_code is its exit status (128 + N when killed by
 * signal N). Fails with AD_ERR_JOB when the connection is lost. */
ad_status ad_ssh_exec(ad_ssh *s, const char *command, int stdin_fd, ad_ssh_sink sink, void *ctx,
                      int *exit_code);

/* Copies local file `local` to `remote` (an absolute path on the node) over
 * SFTP, creating missing parent folders, through a temporary name renamed
 * into place. */
ad_status ad_ssh_upload(ad_ssh *s, const char *local, const char *remote);

/* The node name the session was opened for (for messages). */
const char *ad_ssh_node(const ad_ssh *s);

void ad_ssh_close(ad_ssh *s);

/* `s` quoted for a POSIX shell: a single-quoted word ('\'' for each quote), so
 * that it reaches the command literally. Returns a malloc'd string. */
char *ad_shell_quote(const char *s);

#endif
