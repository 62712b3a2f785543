// SPDX-License-Identifier: MIT

// Command icmplb-demo builds the seed topology in network namespaces, runs the
// icmplb agent on the balancer host with an IPv4 and an IPv6 service, pings
// both VIPs from two clients and shows what the agent measured. `make demo`
// runs it; it needs root.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/icmplb/icmplb/config"
	"github.com/icmplb/icmplb/internal/histquant"
	"github.com/icmplb/icmplb/internal/responder"
	"github.com/icmplb/icmplb/internal/topology"
)

const (
	prefix = "icmplbdemo"
	// metricsAddr is the agent's default address, reached inside the lb
	// namespace.
	metricsAddr = "127.0.0.1" + config.DefaultListenAddress
)

func main() {
	bin := flag.String("bin", "bin/icmplb", "path of the icmplb binary")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(bin string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it creates network namespaces and attaches XDP (run `sudo make demo`)")
	}
	// A demo killed halfway leaves its namespaces behind; start clean.
	if err := topology.DeleteNamed(prefix); err != nil {
		return err
	}
	topo, err := topology.NewNamed(prefix, topology.Seed())
	if err != nil {
		return err
	}
	defer topo.Close()
	step("seed topology: bridge in %s", topo.SwitchNS)
	for _, name := range topo.HostNames() {
		h := topo.Host(name)
		fmt.Printf("  %-3s %-16s %-14s %-17s %s\n", name, h.NS, h.Addr, h.Addr6, h.MAC)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// h3 answers pings itself, late and lossy, so that the metrics show two
	// different backends, and the agent ejects it (30% loss is more than
	// the default --outlier.max-loss-ratio).
	if err := responder.DisableKernelEcho(topo, topology.SeedBackend2); err != nil {
		return err
	}
	var slow *responder.Responder
	if err := topo.InNS(topology.SeedBackend2, func() error {
		var err error
		slow, err = responder.Listen(responder.Config{Delay: 20 * time.Millisecond, Loss: 0.3, Seed: 1})
		return err
	}); err != nil {
		return err
	}
	go slow.Serve()
	defer slow.Close()

	dir, err := os.MkdirTemp("", "icmplb-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	agent, attached, err := startAgent(topo, bin, dir)
	if err != nil {
		return err
	}
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		step("agent stopped; topology removed")
	}()
	select {
	case <-attached:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("agent did not attach within 10s")
	case <-ctx.Done():
		return ctx.Err()
	}

	step("h1 pings the VIP %s", topology.SeedVIP)
	out, err := topo.Run(topology.SeedClient, "ping", "-c", "4", "-i", "0.2", "-W", "1", topology.SeedVIP.String())
	fmt.Print(indent(out))
	if err != nil {
		return fmt.Errorf("ping the VIP: %w", err)
	}

	step("h1 and h4 ping the VIP with 16 identifiers each, at the same time (identifiers 4242.. used by both)")
	var wg sync.WaitGroup
	var mu sync.Mutex
	answered, sent := 0, 0
	for _, client := range []string{topology.SeedClient, topology.SeedClient2} {
		for i := 0; i < 16; i++ {
			id := 4242 + i
			wg.Go(func() {
				out, _ := topo.Run(client, "ping", "-e", strconv.Itoa(id), "-c", "25", "-i", "0.02", "-W", "1", topology.SeedVIP.String())
				mu.Lock()
				defer mu.Unlock()
				sent += 25
				answered += strings.Count(out, "bytes from "+topology.SeedVIP.String())
			})
		}
	}
	wg.Wait()
	fmt.Printf("  %d of %d echo requests answered from the VIP\n", answered, sent)

	step("h1 and h4 ping the IPv6 VIP %s with the same identifiers, at the same time", topology.SeedVIP6)
	answered, sent = 0, 0
	for _, client := range []string{topology.SeedClient, topology.SeedClient2} {
		for i := 0; i < 16; i++ {
			id := 4242 + i
			wg.Go(func() {
				out, _ := topo.Run(client, "ping", "-6", "-e", strconv.Itoa(id), "-c", "25", "-i", "0.02", "-W", "1", topology.SeedVIP6.String())
				mu.Lock()
				defer mu.Unlock()
				sent += 25
				answered += strings.Count(out, "bytes from "+topology.SeedVIP6.String()+":")
			})
		}
	}
	wg.Wait()
	fmt.Printf("  %d of %d ICMPv6 echo requests answered from the VIP\n", answered, sent)
	if answered == 0 {
		return fmt.Errorf("no ICMPv6 echo request to %s was answered", topology.SeedVIP6)
	}

	step("waiting for the loss timeout (1s) so that unanswered requests count as lost")
	time.Sleep(2500 * time.Millisecond)
	if err := showMetrics(topo, slow); err != nil {
		return err
	}
	return showStatus(topo, bin)
}

// showStatus keeps h1 pinging until the agent ejects the lossy h3, then
// runs `icmplb status`, as an operator would, to see it and why.
func showStatus(topo *topology.Topology, bin string) error {
	step("h1 keeps pinging: h3 loses 30%% of its replies, more than --outlier.max-loss-ratio (10%%), within --outlier.window (10s)")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				topo.Run(topology.SeedClient, "ping", "-e", strconv.Itoa(5000+i), "-c", "20", "-i", "0.05", "-W", "1", topology.SeedVIP.String())
			}
		})
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	start := time.Now()
	state := ""
	for time.Since(start) < 30*time.Second && state != "ejected" && state != "probe_failed" {
		time.Sleep(500 * time.Millisecond)
		state = backendState(topo, topology.SeedH3.String())
	}
	if state != "ejected" && state != "probe_failed" {
		return fmt.Errorf("h3 is still %q after %v of 30%% loss: no ejection", state, time.Since(start).Round(time.Second))
	}
	fmt.Printf("  h3 is %s after %v (the agent's log line above has the figures)\n", state, time.Since(start).Round(100*time.Millisecond))
	args := []string{"status", "--agent", "http://" + metricsAddr, "--interval", "2s"}
	step("%s %s (in the lb namespace)", bin, strings.Join(args, " "))
	out, err := topo.Run(topology.SeedBalancer, bin, args...)
	fmt.Print(indent(out))
	if err != nil {
		return fmt.Errorf("icmplb status: %w", err)
	}
	return nil
}

// backendState reads a backend's icmplb_backend_state from the agent.
func backendState(topo *topology.Topology, backend string) string {
	mfs, err := scrape(topo)
	if err != nil {
		return ""
	}
	for _, m := range mfs["icmplb_backend_state"].GetMetric() {
		var be, st string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "backend":
				be = l.GetValue()
			case "state":
				st = l.GetValue()
			}
		}
		if be == backend && m.GetGauge().GetValue() == 1 {
			return st
		}
	}
	return ""
}

// showMetrics scrapes the agent and prints what it measured per backend.
// get scrapes the agent's /metrics in the format accept names.
func get(topo *topology.Topology, accept string) ([]byte, error) {
	req, _ := http.NewRequest("GET", "http://"+metricsAddr+"/metrics", nil)
	req.Header.Set("Accept", accept)
	resp, err := topo.HTTPClient(topology.SeedBalancer).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape the agent: %w", err)
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// scrape reads the agent's metric families.
func scrape(topo *topology.Topology) (map[string]*dto.MetricFamily, error) {
	pb, err := get(topo, "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	if err != nil {
		return nil, err
	}
	mfs := map[string]*dto.MetricFamily{}
	dec := expfmt.NewDecoder(bytes.NewReader(pb), expfmt.NewFormat(expfmt.TypeProtoDelim))
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			break
		}
		mfs[mf.GetName()] = mf
	}
	return mfs, nil
}

func showMetrics(topo *topology.Topology, slow *responder.Responder) error {
	text, err := get(topo, "text/plain")
	if err != nil {
		return err
	}
	step("the agent's metrics (curl http://%s/metrics in the lb namespace; buckets left out)", metricsAddr)
	for _, line := range strings.Split(string(text), "\n") {
		if strings.HasPrefix(line, "icmplb_") && !strings.Contains(line, "_bucket") &&
			(!strings.HasPrefix(line, "icmplb_packets_total") || !strings.HasSuffix(line, " 0")) {
			fmt.Println("  " + line)
		}
	}

	mfs, err := scrape(topo)
	if err != nil {
		return err
	}
	value := func(name, backend string) float64 {
		for _, m := range mfs[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "backend" && l.GetValue() == backend {
					if m.Histogram != nil {
						return float64(m.GetHistogram().GetSampleCount())
					}
					return m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
		return 0
	}
	histogram := func(backend string) *dto.Histogram {
		for _, m := range mfs["icmplb_backend_rtt_seconds"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "backend" && l.GetValue() == backend {
					return m.GetHistogram()
				}
			}
		}
		return nil
	}
	step("per backend, as measured by the balancer")
	fmt.Printf("  %-11s %-28s %8s %8s %6s %7s %9s %9s\n", "backend", "answers as", "requests", "replies", "lost", "loss", "p50 RTT", "p99 RTT")
	var problems []string
	for _, b := range []struct {
		addr netip.Addr
		how  string
	}{
		{topology.SeedH2, "kernel (fast, no loss)"},
		{topology.SeedH3, "responder: 20ms, 30% loss"},
		{topology.SeedH2v6, "kernel (fast, no loss)"},
		{topology.SeedH3v6, "kernel (fast, no loss)"},
	} {
		addr := b.addr.String()
		req, rep, lost := value("icmplb_backend_requests_total", addr), value("icmplb_backend_replies_total", addr), value("icmplb_backend_lost_total", addr)
		h := histogram(addr)
		ratio := 0.0
		if req > 0 {
			ratio = lost / req
		}
		fmt.Printf("  %-11s %-28s %8.0f %8.0f %6.0f %6.1f%% %7.3fms %7.3fms\n", addr, b.how, req, rep, lost, ratio*100,
			histquant.Quantile(0.5, h)*1e3, histquant.Quantile(0.99, h)*1e3)
		if req == 0 {
			problems = append(problems, fmt.Sprintf("backend %s got no requests", addr))
		}
	}
	_, _, dropped := slow.Stats()
	fmt.Printf("  (the responder on %s dropped %d requests on purpose)\n", topology.SeedBackend2, dropped)
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// services is the demo's services file: one service per family, h2 and h3
// behind both.
const services = `services:
  - vip: %s
    backends: [%s, %s]
  - vip: %s
    backends: ["%s", "%s"]
`

// startAgent runs icmplb on the balancer host with the services file in dir,
// echoing its log, and reports when the program is attached.
func startAgent(topo *topology.Topology, bin, dir string) (*exec.Cmd, <-chan struct{}, error) {
	file := filepath.Join(dir, "services.yml")
	content := fmt.Sprintf(services, topology.SeedVIP, topology.SeedH2, topology.SeedH3,
		topology.SeedVIP6, topology.SeedH2v6, topology.SeedH3v6)
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		return nil, nil, err
	}
	step("services file %s:\n%s", file, indent(content))
	cmd := topo.Command(topology.SeedBalancer, bin, "run", "--iface", "eth0", "--config.file", file,
		"--web.listen-address", metricsAddr)
	logs, err := cmd.StderrPipe()
	if err != nil {
		return nil, nil, err
	}
	step("agent: %s", strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	attached := make(chan struct{})
	go func() {
		once := sync.Once{}
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			fmt.Println("  agent| " + sc.Text())
			if strings.Contains(sc.Text(), "msg=attached") {
				once.Do(func() { close(attached) })
			}
		}
	}()
	return cmd, attached, nil
}

func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		b.WriteString("  " + sc.Text() + "\n")
	}
	return b.String()
}
