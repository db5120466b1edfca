// SSE load tools for bench/llm_scale.py (127.0.0.1 only): an OpenAI-style streaming model
// server and a client, in C so that thousands of streams cost the 2-core machine little and
// what is measured is Envoy and extauthz, not the load.
//   sseload server PORT TICK_MS
//     HTTP/1.1 keep-alive upstream: any POST (its body skipped) gets an SSE chat stream of
//     `x-chunks: N` events, one every TICK_MS per stream (streams staggered), then a usage
//     chunk (prompt 11, completion N-2) and `data: [DONE]`.
//   sseload client PORT STREAMS N TIMEOUT_S TOKEN RAMP_US
//     STREAMS concurrent POST /v1/chat/completions (Bearer TOKEN, asking for N chunks and
//     the usage chunk), one opened every RAMP_US µs; prints JSON: ok, ttfc percentiles.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAXC 4096
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
static void nb(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// ---------------- server ----------------
typedef struct { int fd; int streaming; int idx; int n; int phase; char req[8192]; int rlen; long skip; } Conn;
static long tickno = 0, started = 0;
static Conn *conns[65536];
static char *chunks[100000];
static int chunklen[100000];
static char *usage_chunk[100000];  // per stream length: completion = N - 2
static int usage_len[100000];

static void mkchunk(int i, const char *payload, int last) {
  int pl = strlen(payload);
  char *b = malloc(pl + 64);
  int l = sprintf(b, "%x\r\n%s\r\n%s", pl, payload, last ? "0\r\n\r\n" : "");
  chunks[i] = b; chunklen[i] = l;
}

static long werr = 0, sent = 0;
static int maxfd = 0;
static int server(int port, int tick_ms) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1024)) { perror("bind"); return 1; }
  nb(ls);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  int tf = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  // 1 ms timer; each stream writes every tick_ms ticks at its own phase (streams are
  // staggered, not all written in one burst)
  struct itimerspec its = {{0, 1000000L}, {0, 1000000L}};
  timerfd_settime(tf, 0, &its, NULL);
  ev.data.fd = tf; epoll_ctl(ep, EPOLL_CTL_ADD, tf, &ev);
  fprintf(stderr, "sseload server on %d tick %d ms\n", port, tick_ms);
  double t_end = now() + 1500;  // hard bound 25 min
  struct epoll_event evs[256];
  while (now() < t_end) {
    int k = epoll_wait(ep, evs, 256, 1000);
    for (int i = 0; i < k; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept(ls, NULL, NULL)) >= 0) {
          nb(c); setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          conns[c] = calloc(1, sizeof(Conn)); conns[c]->fd = c; if (c > maxfd) maxfd = c;
          struct epoll_event e2 = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &e2);
        }
      } else if (fd == tf) {
        unsigned long long x; (void)!read(tf, &x, 8); tickno++;
        for (int c = 0; c <= maxfd; c++) {
          Conn *cn = conns[c];
          if (!cn || !cn->streaming) continue;
          if (tickno % tick_ms != cn->phase) continue;
          ssize_t w, want;
          if (cn->idx == cn->n - 2) {
            if (!usage_chunk[cn->n]) {
              char p[256];
              snprintf(p, sizeof p, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\","
                       "\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":%d,"
                       "\"total_tokens\":%d}}\n\n", cn->n - 2, cn->n + 9);
              int pl = strlen(p);
              usage_chunk[cn->n] = malloc(pl + 32);
              usage_len[cn->n] = sprintf(usage_chunk[cn->n], "%x\r\n%s\r\n", pl, p);
            }
            want = usage_len[cn->n];
            w = write(c, usage_chunk[cn->n], want);
          } else {
            int ci = cn->idx < cn->n - 2 ? cn->idx : 99999;
            want = chunklen[ci];
            w = write(c, chunks[ci], want);
          }
          if (w != want) werr++;
          sent++;
          if (++cn->idx >= cn->n) { cn->streaming = 0; cn->rlen = 0; }
        }
      } else {
        Conn *cn = conns[fd];
        char junk[65536];
        ssize_t r;
        if (cn->skip > 0) {  // the rest of a request body: read and dropped
          r = read(fd, junk, cn->skip < (long)sizeof junk ? cn->skip : (long)sizeof junk);
          if (r > 0) { cn->skip -= r; continue; }
        } else {
          r = read(fd, cn->req + cn->rlen, sizeof(cn->req) - 1 - cn->rlen);
        }
        if (r <= 0) {
          if (r < 0 && errno == EAGAIN) continue;
          close(fd); free(cn); conns[fd] = NULL; continue;
        }
        cn->rlen += r; cn->req[cn->rlen] = 0;
        char *end = strstr(cn->req, "\r\n\r\n");
        if (end && !cn->streaming) {
          char *q = strcasestr(cn->req, "x-chunks:");
          char *cl = strcasestr(cn->req, "content-length:");
          long body = cl ? atol(cl + 15) : 0;
          cn->skip = body - (cn->rlen - (end + 4 - cn->req));
          cn->n = q ? atoi(q + 9) : 256;
          if (cn->n < 2) cn->n = 2;
          if (cn->n > 99990) cn->n = 99990;
          const char *h = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
          (void)!write(fd, h, strlen(h));
          cn->streaming = 1; cn->idx = 0; cn->rlen = 0; cn->phase = (started++) % tick_ms;
        }
      }
    }
  }
  return 0;
}

// ---------------- client ----------------
typedef struct { int fd; double t0, tfirst; int hdr_done; int recvs; int ok; int closed; char tail[8]; int tl; char hb[8192]; int hl; } Cl;
static int cmpd(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
static int client(int port, int streams, int n, int timeout_s, const char *token, int ramp_us) {
  int ep = epoll_create1(0);
  Cl *cl = calloc(streams, sizeof(Cl));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  char body[256], req[1024];
  int bl = sprintf(body, "{\"model\":\"demo-small\",\"messages\":[],\"stream\":true,"
                   "\"stream_options\":{\"include_usage\":true},\"max_tokens\":%d}", n + 10);
  int rl = snprintf(req, sizeof req, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                    "authorization: Bearer %s\r\ncontent-type: application/json\r\n"
                    "x-chunks: %d\r\ncontent-length: %d\r\n\r\n%s", token, n, bl, body);
  for (int i = 0; i < streams; i++) {
    if (ramp_us > 0) usleep(ramp_us);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cl[i].fd = fd;
    if (connect(fd, (void *)&a, sizeof a)) { perror("connect"); cl[i].closed = 1; continue; }
    nb(fd);
    cl[i].t0 = now();
    (void)!write(fd, req, rl);
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  }
  int open_ = streams;
  double t_end = now() + timeout_s;
  struct epoll_event evs[256];
  char buf[65536];
  while (open_ > 0 && now() < t_end) {
    int k = epoll_wait(ep, evs, 256, 200);
    for (int j = 0; j < k; j++) {
      Cl *c = &cl[evs[j].data.u32];
      ssize_t r = read(c->fd, buf, sizeof buf);
      if (r < 0 && errno == EAGAIN) continue;
      if (r <= 0) { close(c->fd); c->closed = 1; open_--; continue; }
      c->recvs++;
      char *body = buf; ssize_t bl = r;
      if (!c->hdr_done) {
        int cp = r < (ssize_t)(sizeof c->hb - 1 - c->hl) ? r : (ssize_t)(sizeof c->hb - 1 - c->hl);
        memcpy(c->hb + c->hl, buf, cp); c->hl += cp; c->hb[c->hl] = 0;
        char *e = strstr(c->hb, "\r\n\r\n");
        if (!e) continue;
        c->hdr_done = 1;
        int consumed = (e + 4 - c->hb) - (c->hl - cp);
        body = buf + consumed; bl = r - consumed;
      }
      if (bl > 0 && c->tfirst == 0) c->tfirst = now() - c->t0;
      for (ssize_t x = 0; x < bl; x++) { memmove(c->tail, c->tail + 1, 7); c->tail[7] = body[x]; }
      if (bl > 0 && memcmp(c->tail + 3, "0\r\n\r\n", 5) == 0) {
        c->ok = 1; close(c->fd); c->closed = 1; open_--;
      }
    }
  }
  double *tt = malloc(sizeof(double) * streams);
  int ok = 0; long recvs = 0;
  for (int i = 0; i < streams; i++) if (cl[i].ok) { tt[ok++] = cl[i].tfirst * 1000; recvs += cl[i].recvs; }
  for (int i = 0; i < streams; i++) if (!cl[i].closed) close(cl[i].fd);
  qsort(tt, ok, sizeof(double), cmpd);
  printf("{\"ok\": %d, \"fail\": %d, \"ttfc_p50_ms\": %.2f, \"ttfc_p90_ms\": %.2f, \"ttfc_p99_ms\": %.2f, \"recvs_per_stream\": %.1f}\n",
         ok, streams - ok, ok ? tt[ok / 2] : -1, ok ? tt[(int)(0.9 * (ok - 1))] : -1,
         ok ? tt[(int)(0.99 * (ok - 1))] : -1, ok ? (double)recvs / ok : 0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && !strcmp(argv[1], "server")) {
    char p[512];
    for (int i = 0; i < 99990; i++) {
      snprintf(p, sizeof p, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d \"}}]}\n\n", i);
      if (i < 1000) mkchunk(i, p, 0); else { chunks[i] = chunks[i % 1000]; chunklen[i] = chunklen[i % 1000]; }
    }
    mkchunk(99999, "data: [DONE]\n\n", 1);
    return server(atoi(argv[2]), atoi(argv[3]));
  }
  if (argc >= 8 && !strcmp(argv[1], "client"))
    return client(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argv[6], atoi(argv[7]));
  fprintf(stderr, "usage: see source\n");
  return 2;
}
