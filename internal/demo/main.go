// Command demo builds the seed topology in network namespaces, runs the
// icmplb agent on the balancer host, pings the VIP from two clients and
// shows what the agent measured. `make demo` runs it; it needs root.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/icmplb/icmplb/internal/topology"
)

const prefix = "icmplbdemo"

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
		fmt.Printf("  %-3s %-16s %-14s %s\n", name, h.NS, h.Addr, h.MAC)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	agent, attached, err := startAgent(topo, bin)
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

	before := echoesPerBackend(topo)
	step("h1 pings the VIP %s", topology.SeedVIP)
	out, err := topo.Run(topology.SeedClient, "ping", "-c", "4", "-i", "0.2", "-W", "1", topology.SeedVIP.String())
	fmt.Print(indent(out))
	if err != nil {
		return fmt.Errorf("ping the VIP: %w", err)
	}

	step("h1 and h4 ping the VIP with 16 identifiers each, at the same time (identifier 4242 used by both)")
	var wg sync.WaitGroup
	var mu sync.Mutex
	answered, sent := 0, 0
	for _, client := range []string{topology.SeedClient, topology.SeedClient2} {
		for i := 0; i < 16; i++ {
			id := 4242 + i
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, _ := topo.Run(client, "ping", "-e", strconv.Itoa(id), "-c", "3", "-i", "0.1", "-W", "1", topology.SeedVIP.String())
				mu.Lock()
				defer mu.Unlock()
				sent += 3
				answered += strings.Count(out, "bytes from "+topology.SeedVIP.String())
			}()
		}
	}
	wg.Wait()
	fmt.Printf("  %d of %d echo requests answered from the VIP\n", answered, sent)

	step("echo requests each backend's kernel answered")
	after := echoesPerBackend(topo)
	for _, b := range []string{topology.SeedBackend1, topology.SeedBackend2} {
		fmt.Printf("  %s (%s): %d\n", b, topo.Addr(b), after[b]-before[b])
	}
	if answered != sent {
		return fmt.Errorf("%d echo requests were not answered", sent-answered)
	}
	return nil
}

// startAgent runs icmplb on the balancer host, echoing its log, and reports
// when the program is attached.
func startAgent(topo *topology.Topology, bin string) (*exec.Cmd, <-chan struct{}, error) {
	cmd := topo.Command(topology.SeedBalancer, bin, "run", "--iface", "eth0",
		"--vip", topology.SeedVIP.String(),
		"--backend", topology.SeedH2.String(), "--backend", topology.SeedH3.String())
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

func echoesPerBackend(topo *topology.Topology) map[string]int {
	got := map[string]int{}
	for _, b := range []string{topology.SeedBackend1, topology.SeedBackend2} {
		snmp, err := topo.Run(b, "cat", "/proc/net/snmp")
		if err == nil {
			got[b] = icmpInEchos(snmp)
		}
	}
	return got
}

// icmpInEchos reads the Icmp InEchos counter from /proc/net/snmp text.
func icmpInEchos(snmp string) int {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Icmp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "InEchos" && i < len(fields) {
				v, _ := strconv.Atoi(fields[i])
				return v
			}
		}
	}
	return 0
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
