// SPDX-License-Identifier: MIT

package exporter

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
)

// The HTTP server's timeouts. Every one bounds how long a client can keep a
// connection, and so a descriptor, without the server's consent: a request's
// headers must arrive within readHeaderTimeout and the whole request within
// readTimeout; writeTimeout leaves a large scrape (1000 backends, protobuf)
// time on a slow link; a keep-alive connection is closed after idleTimeout,
// longer than any usual scrape interval so that Prometheus keeps its
// connection between scrapes.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 2 * time.Minute
)

// WebConfig is how the agent serves HTTP.
type WebConfig struct {
	// ListenAddress is a TCP address, e.g. ":10047".
	ListenAddress string
	// ConfigFile is an exporter-toolkit web configuration file (TLS, basic
	// auth, rate limit; see
	// https://prometheus.io/docs/prometheus/latest/configuration/https/);
	// empty serves plain HTTP to everyone.
	ConfigFile string
	// MaxConnections bounds the open connections; at the bound the one idle
	// for longest is closed to make room.
	MaxConnections int
}

// Server is the agent's HTTP server: bounded in time and in connections, and
// secured as the web configuration file says.
type Server struct {
	cfg  WebConfig
	log  *slog.Logger
	ln   *limitListener
	http *http.Server
}

// NewServer checks the web configuration and listens, so that a bad file or a
// taken port stops startup before anything is attached. Serve serves.
func NewServer(cfg WebConfig, h http.Handler, logger *slog.Logger) (*Server, error) {
	if cfg.MaxConnections < 1 {
		return nil, fmt.Errorf("--web.max-connections %d: must be at least 1", cfg.MaxConnections)
	}
	if err := ValidateWebConfigFile(cfg.ConfigFile); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("listen on --web.listen-address %s: %w", cfg.ListenAddress, err)
	}
	s := &Server{cfg: cfg, log: logger}
	s.ln = newLimitListener(ln, cfg.MaxConnections, logger)
	s.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ConnState:         s.ln.connState,
		ErrorLog:          log.New(&serverErrorLog{logger}, "", 0),
	}
	return s, nil
}

// ValidateWebConfigFile reads an exporter-toolkit web configuration file as
// the server will, with its certificates and password hashes, and says in one
// line what is wrong with it. An empty path is valid: no TLS, no auth.
func ValidateWebConfigFile(path string) error {
	if path == "" {
		return nil
	}
	if err := web.Validate(path); err != nil {
		// YAML errors span several lines; a startup error is one.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		return fmt.Errorf("--web.config.file %s: %s (see https://prometheus.io/docs/prometheus/latest/configuration/https/)", path, msg)
	}
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown, through exporter-toolkit, which adds TLS,
// basic auth and the rate limit of the web configuration file. It returns nil
// after Shutdown.
func (s *Server) Serve() error {
	systemd := false
	addrs := []string{s.cfg.ListenAddress}
	file := s.cfg.ConfigFile
	err := web.Serve(s.ln, s.http, &web.FlagConfig{
		WebListenAddresses: &addrs, WebSystemdSocket: &systemd, WebConfigFile: &file,
	}, slog.New(demoteInfo{s.log.Handler()}))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, closes idle connections and waits for active
// ones until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// demoteInfo logs exporter-toolkit's informational lines ("Listening on",
// "TLS is disabled") at debug: they would come before a startup error and
// break its one line, and the agent says where it serves once it is attached.
type demoteInfo struct{ slog.Handler }

func (h demoteInfo) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, demote(l))
}

func (h demoteInfo) Handle(ctx context.Context, r slog.Record) error {
	r.Level = demote(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h demoteInfo) WithAttrs(a []slog.Attr) slog.Handler {
	return demoteInfo{h.Handler.WithAttrs(a)}
}

func (h demoteInfo) WithGroup(name string) slog.Handler { return demoteInfo{h.Handler.WithGroup(name)} }

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

// serverErrorLog takes net/http's own log lines: a failed TLS handshake is
// what any plain-HTTP client or port scanner causes, so it is debug; the rest
// (accept errors such as "too many open files") are warnings.
type serverErrorLog struct{ log *slog.Logger }

func (w *serverErrorLog) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	level := slog.LevelWarn
	if strings.Contains(msg, "TLS handshake error") {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, "HTTP server", "err", msg)
	return len(p), nil
}

// limitListener bounds the open connections. At the bound it does not refuse
// newcomers (a scraper refused while an idle client holds a slot would lose
// its scrape): it closes the connection that has waited longest for a
// request, which is what a client holding connections to exhaust the agent's
// descriptors leaves. Waiting for a request, to net/http, means that no
// request has been read whole yet: a connection just accepted, in its TLS
// handshake, sending its headers slowly, or kept alive after a response. Only
// when every connection is busy with a request does Accept wait, and the
// server's read and write timeouts bound that wait.
type limitListener struct {
	net.Listener
	max int
	log *slog.Logger

	mu      sync.Mutex
	conns   map[*limitConn]struct{}
	evicted int       // since the last warning
	warned  time.Time // of the last warning
	// freed gets a token whenever a connection closes or turns idle.
	freed  chan struct{}
	closed chan struct{}
	once   sync.Once
}

// evictionWarnEvery rate-limits the warning about evictions: a client
// holding connections would otherwise flood the log.
const evictionWarnEvery = time.Minute

func newLimitListener(l net.Listener, max int, logger *slog.Logger) *limitListener {
	return &limitListener{
		Listener: l, max: max, log: logger,
		conns:  map[*limitConn]struct{}{},
		freed:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
}

// limitConn is an accepted connection; idle and since are guarded by the
// listener's mu.
type limitConn struct {
	net.Conn
	l     *limitListener
	once  sync.Once
	idle  bool      // waiting for a request: new, or kept alive
	since time.Time // when it started waiting
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.signal()
	})
	return c.Conn.Close()
}

func (l *limitListener) signal() {
	select {
	case l.freed <- struct{}{}:
	default:
	}
}

// Accept accepts first and makes room after, so that a connection is closed
// only when a newcomer needs its slot; meanwhile the listener holds at most
// max+1 connections.
func (l *limitListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		l.mu.Lock()
		if len(l.conns) < l.max {
			c := &limitConn{Conn: nc, l: l, idle: true, since: time.Now()}
			l.conns[c] = struct{}{}
			l.mu.Unlock()
			return c, nil
		}
		victim := l.longestIdle()
		l.mu.Unlock()
		if victim != nil {
			l.evict(victim)
			continue
		}
		select {
		case <-l.freed:
		case <-l.closed:
			nc.Close()
			return nil, net.ErrClosed
		}
	}
}

// longestIdle is the connection waiting longest for a request, or nil when
// all are busy. l.mu is held.
func (l *limitListener) longestIdle() *limitConn {
	var victim *limitConn
	for c := range l.conns {
		if c.idle && (victim == nil || c.since.Before(victim.since)) {
			victim = c
		}
	}
	return victim
}

func (l *limitListener) evict(c *limitConn) {
	l.mu.Lock()
	idleFor := time.Since(c.since)
	l.evicted++
	warn := time.Since(l.warned) >= evictionWarnEvery
	n := l.evicted
	if warn {
		l.evicted, l.warned = 0, time.Now()
	}
	l.mu.Unlock()
	c.Close()
	l.log.Debug("closed an idle HTTP connection to make room", "remote", c.RemoteAddr().String(), "idle", idleFor.Round(time.Millisecond))
	if warn {
		l.log.Warn("HTTP connections at --web.max-connections: closing the longest-idle ones to serve new clients",
			"max", l.max, "closed", n)
	}
}

// connState follows the server's view of each connection: only one waiting
// for a request may be closed to make room.
func (l *limitListener) connState(nc net.Conn, state http.ConnState) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, ok := nc.(*limitConn)
	if !ok {
		return
	}
	turnedIdle := false
	l.mu.Lock()
	switch state {
	case http.StateNew, http.StateIdle:
		if !c.idle {
			c.idle, c.since, turnedIdle = true, time.Now(), true
		}
	case http.StateActive, http.StateHijacked:
		c.idle = false
	}
	l.mu.Unlock()
	if turnedIdle {
		l.signal()
	}
}

// Open is the number of connections the listener holds.
func (l *limitListener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}
