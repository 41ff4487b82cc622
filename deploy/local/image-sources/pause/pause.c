/* The sandbox ("pause") container of the local real node: it holds the pod's namespaces and does
 * nothing else. pause() in a loop; SIGTERM or SIGINT exits 0; SIGCHLD reaps every exited child
 * (as PID 1 of a pod sharing its PID namespace it inherits orphans).
 *
 *   gcc -Os -static -s -o pause pause.c
 */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
  int saved = errno;
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
  errno = saved;
}

int main(void) {
  struct sigaction stop = {.sa_handler = on_stop}, child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGTERM, &stop, NULL) || sigaction(SIGINT, &stop, NULL) || sigaction(SIGCHLD, &child, NULL)) return 1;
  for (;;) pause();
}
