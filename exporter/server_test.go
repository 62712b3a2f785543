// SPDX-License-Identifier: MIT

package exporter

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icmplb/icmplb/internal/webtest"
)

// startServer serves h on a loopback port as the agent does, stopping it
// when the test ends.
func startServer(t *testing.T, cfg WebConfig, h http.Handler) *Server {
	t.Helper()
	cfg.ListenAddress = "127.0.0.1:0"
	s, err := NewServer(cfg, h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve after Shutdown: %v, want nil", err)
		}
	})
	return s
}

func testHandler(t *testing.T) http.Handler {
	t.Helper()
	srv, _ := testServer(t)
	return srv.Config.Handler
}

// holdIdle opens a connection, makes one keep-alive request on it and keeps
// it open, as the client of issue 7 does.
func holdIdle(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c
}

// waitIdle waits until the server counts n connections waiting for a
// request.
func waitIdle(t *testing.T, s *Server, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.ln.mu.Lock()
		idle := 0
		for c := range s.ln.conns {
			if c.idle {
				idle++
			}
		}
		s.ln.mu.Unlock()
		if idle == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections idle, want %d", idle, n)
		}
	}
}

// closedByServer tells whether the server has closed c, waiting up to wait.
func closedByServer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestServerTimeouts(t *testing.T) {
	s := startServer(t, WebConfig{MaxConnections: 64}, http.NotFoundHandler())
	for name, got := range map[string][2]time.Duration{
		"ReadHeaderTimeout": {s.http.ReadHeaderTimeout, 5 * time.Second},
		"ReadTimeout":       {s.http.ReadTimeout, 10 * time.Second},
		"WriteTimeout":      {s.http.WriteTimeout, 30 * time.Second},
		"IdleTimeout":       {s.http.IdleTimeout, 2 * time.Minute},
	} {
		if got[0] != got[1] {
			t.Errorf("%s %v, want %v", name, got[0], got[1])
		}
	}
}

// TestServerClosesLongestIdle fills every slot with clients that hold their
// connections (kept alive after a request, or silent since connecting): fresh
// scrapes must still succeed, by closing the longest-idle holders, and the
// server must never hold more than the limit and the newcomer.
func TestServerClosesLongestIdle(t *testing.T) {
	const max = 4
	s := startServer(t, WebConfig{MaxConnections: max}, testHandler(t))
	addr := s.Addr().String()
	var held []net.Conn
	for range max / 2 {
		held = append(held, holdIdle(t, addr))
	}
	for range max / 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	// The silent ones are accepted asynchronously: wait for all to count.
	for deadline := time.Now().Add(5 * time.Second); s.ln.Open() < max; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want %d", s.ln.Open(), max)
		}
		time.Sleep(time.Millisecond)
	}
	for i := range 2 * max {
		// A client of its own per scrape, keeping its connection open
		// afterwards: each newcomer needs a slot of its own.
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		client := &http.Client{Timeout: 5 * time.Second, Transport: tr}
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatalf("scrape %d with every slot held: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "icmplb_build_info") {
			t.Fatalf("scrape %d: %d %.100q", i, resp.StatusCode, body)
		}
		if n := s.ln.Open(); n > max+1 {
			t.Fatalf("%d connections open, limit %d", n, max)
		}
	}
	for i, c := range held {
		if !closedByServer(c, 5*time.Second) {
			t.Errorf("held connection %d still open after %d fresh scrapes", i, 2*max)
		}
	}
}

// TestServerEvictsOldestFirst: one newcomer closes exactly the connection idle
// for longest, not a younger one.
func TestServerEvictsOldestFirst(t *testing.T) {
	const max = 3
	s := startServer(t, WebConfig{MaxConnections: max}, testHandler(t))
	addr := s.Addr().String()
	var held []net.Conn
	for i := range max {
		held = append(held, holdIdle(t, addr))
		// The client reads its response before the server marks the
		// connection idle: wait, so that the idle order is the test's.
		waitIdle(t, s, i+1)
	}
	holdIdle(t, addr) // the newcomer
	if !closedByServer(held[0], 5*time.Second) {
		t.Error("the longest-idle connection is still open")
	}
	for i, c := range held[1:] {
		if closedByServer(c, 100*time.Millisecond) {
			t.Errorf("connection %d closed, though younger than the first", i+1)
		}
	}
}

// TestServerWaitsWhenAllBusy: with every slot busy in a request, a newcomer
// is neither refused nor allowed to exceed the limit: it is served once a
// slot frees.
func TestServerWaitsWhenAllBusy(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok\n")
	})
	s := startServer(t, WebConfig{MaxConnections: 1}, h)
	url := "http://" + s.Addr().String()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	slow := make(chan error, 1)
	go func() {
		resp, err := client.Get(url + "/slow")
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	<-entered
	fast := make(chan error, 1)
	go func() {
		resp, err := client.Get(url + "/fast")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = errors.New(resp.Status)
			}
		}
		fast <- err
	}()
	select {
	case err := <-fast:
		t.Fatalf("second request done (%v) while the only slot was busy", err)
	case <-time.After(200 * time.Millisecond):
	}
	if n := s.ln.Open(); n > 1 {
		t.Errorf("%d connections registered, limit 1", n)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Errorf("slow request: %v", err)
	}
	if err := <-fast; err != nil {
		t.Errorf("waiting request: %v", err)
	}
}

func TestServerTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	cert := webtest.SelfSigned(t, dir, "127.0.0.1")
	cfgFile := webtest.WriteConfig(t, dir, &cert, map[string]string{"prometheus": "s3cret"}, "")
	s := startServer(t, WebConfig{MaxConnections: 8, ConfigFile: cfgFile}, testHandler(t))
	base := s.Addr().String()
	client := webtest.Client(cert, nil)
	for _, tc := range []struct {
		user, pass string
		want       int
	}{{"prometheus", "s3cret", 200}, {"prometheus", "wrong", 401}, {"nobody", "s3cret", 401}, {"", "", 401}} {
		req, _ := http.NewRequest("GET", "https://"+base+"/metrics", nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.user, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || (tc.want == 200) != strings.Contains(string(body), "icmplb_build_info") {
			t.Errorf("user %q password %q: %d %.80q, want %d", tc.user, tc.pass, resp.StatusCode, body, tc.want)
		}
	}
	// Plain HTTP gets no metrics: net/http answers 400 to it on a TLS port.
	resp, err := http.Get("http://" + base + "/metrics")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || strings.Contains(string(body), "icmplb_") {
			t.Errorf("plain HTTP: %d %.80q, want 400 without metrics", resp.StatusCode, body)
		}
	}
}

func TestServerRateLimit(t *testing.T) {
	cfgFile := webtest.WriteConfig(t, t.TempDir(), nil, nil, "rate_limit:\n  burst: 2\n  interval: 1m\n")
	s := startServer(t, WebConfig{MaxConnections: 8, ConfigFile: cfgFile}, testHandler(t))
	var codes []int
	for range 3 {
		resp, err := http.Get("http://" + s.Addr().String() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Errorf("status codes %v with a burst of 2, want [200 200 429]", codes)
	}
}

// TestBadWebConfig: every mistake stops startup with one line naming the file
// and the problem.
func TestBadWebConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.yml"), "no such file"},
		{write("typo.yml", "basic_auth_user:\n  a: b\n"), "field basic_auth_user not found"},
		{write("plain.yml", "basic_auth_users:\n  prometheus: s3cret\n"), "hashedSecret too short"},
		{write("nocert.yml", "tls_server_config:\n  cert_file: "+filepath.Join(dir, "none.pem")+"\n  key_file: k.pem\n"), "none.pem"},
		{write("nokey.yml", "tls_server_config:\n  cert_file: c.pem\n"), "missing one of key or key_file"},
		{write("yaml.yml", "tls_server_config: [\n"), "yaml"},
	} {
		_, err := NewServer(WebConfig{ListenAddress: "127.0.0.1:0", MaxConnections: 1, ConfigFile: tc.file}, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
		if err == nil {
			t.Errorf("%s: no error", tc.file)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "--web.config.file "+tc.file) || !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q, want one line naming the file and %q", tc.file, msg, tc.want)
		}
	}
	if _, err := NewServer(WebConfig{ListenAddress: "127.0.0.1:0", MaxConnections: 0}, http.NotFoundHandler(), slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "--web.max-connections") {
		t.Errorf("--web.max-connections 0: %v", err)
	}
}

// The toolkit's "Listening on" and "TLS is disabled" would precede a startup
// error on stderr and break its one line: at info level the server is silent.
func TestServeQuietAtInfo(t *testing.T) {
	var buf syncBuffer
	s, err := NewServer(WebConfig{ListenAddress: "127.0.0.1:0", MaxConnections: 1}, http.NotFoundHandler(),
		slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	resp, err := http.Get("http://" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if out := buf.String(); out != "" {
		t.Errorf("server logged at info level: %q", out)
	}

	// At debug the toolkit's lines are kept.
	var dbg syncBuffer
	s, err = NewServer(WebConfig{ListenAddress: "127.0.0.1:0", MaxConnections: 1}, http.NotFoundHandler(),
		slog.New(slog.NewTextHandler(&dbg, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	go func() { served <- s.Serve() }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(dbg.String(), "Listening on") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-served
	if !strings.Contains(dbg.String(), "level=DEBUG") || !strings.Contains(dbg.String(), "Listening on") {
		t.Errorf("debug log lacks the toolkit's lines: %q", dbg.String())
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
