// SPDX-License-Identifier: MIT

package config

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// svc writes a service as the tests expect it back, defaults applied: snat
// "" is the VIP, a backend "ADDR" has DefaultWeight and "ADDR=W" weight W,
// the health settings are the flags' defaults.
func svc(vip, snat string, bes ...string) Service {
	s := healthDefaults()
	s.VIP, s.SNAT = netip.MustParseAddr(vip), netip.MustParseAddr(vip)
	if snat != "" {
		s.SNAT = netip.MustParseAddr(snat)
	}
	for _, b := range bes {
		addr, w, ok := strings.Cut(b, "=")
		be := Backend{Addr: netip.MustParseAddr(addr), Weight: DefaultWeight}
		if ok {
			n, err := strconv.Atoi(w)
			if err != nil {
				panic(err)
			}
			be.Weight = n
		}
		s.Backends = append(s.Backends, be)
	}
	return s
}

// healthDefaults is a Service with only the health settings, at their
// defaults: what the flags give when they give no service.
func healthDefaults() Service {
	return Service{Outlier: DefaultOutlier(), Probe: DefaultProbe(), AllDown: DefaultAllDown}
}

// fileLocation is how an error of a services file says where the problem
// is: the field's path (services[1].backends[0].weight), or the line when
// the YAML itself does not decode.
var fileLocation = regexp.MustCompile(`^(services(\[\d+\]\.[a-z0-9_]+(\[\d+\])?(\.[a-z0-9_]+)?)?|line \d+): `)

// wholeFile are the errors about the file as a whole, which no field or
// line locates.
var wholeFile = []string{"more than one YAML document"}

// Each testdata/services-*.yml is a services file, as data:
// *.good.yml must load; *.bad.yml must be refused with one line that names
// the file, says where in it, and contains its first line's `# error: `.
// Both LoadServices and the command line (--config.file) are checked; a
// bad file whose second line is `# with: --loss-timeout` breaks a bound
// that depends on that flag, which LoadServices does not know: it loads,
// and the command line refuses it.
func TestServicesTestdata(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	var good, bad int
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yml"), func(t *testing.T) {
			wantErr := firstLineError(t, file)
			svcs, err := LoadServices(file, Default().Service)
			c, _, perr := Parse([]string{"--iface", "eth0", "--config.file", file}, nil)
			switch {
			case strings.HasSuffix(file, ".good.yml"):
				good++
				if wantErr != "" {
					t.Errorf("a good example with an `# error:` line")
				}
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if perr != nil {
					t.Fatalf("--config.file %s refused: %v", file, perr)
				}
				if !reflect.DeepEqual(c.Services, svcs) {
					t.Errorf("Parse gives services\n%+v\nLoadServices\n%+v", c.Services, svcs)
				}
			case strings.HasSuffix(file, ".bad.yml"):
				bad++
				if wantErr == "" {
					t.Fatal("a bad example without its `# error:` line")
				}
				switch crossFlag := withFlag(t, file); {
				case crossFlag != "":
					if err != nil {
						t.Errorf("LoadServices refused it, which does not know %s: %v", crossFlag, err)
					}
					if !strings.Contains(wantErr, crossFlag) {
						t.Errorf("the error %q does not name %s", wantErr, crossFlag)
					}
				case err == nil:
					t.Fatalf("accepted: %+v; want %q", svcs, wantErr)
				default:
					checkFileError(t, err, file, wantErr)
				}
				if perr == nil {
					t.Fatalf("--config.file %s accepted; want %q", file, wantErr)
				}
				checkFileError(t, perr, file, wantErr)
			default:
				t.Fatal("name it *.good.yml or *.bad.yml")
			}
		})
	}
	if good == 0 || bad == 0 {
		t.Errorf("%d good and %d bad examples; want both", good, bad)
	}
}

// withFlag is the flag a second line `# with: --flag` names, or "".
func withFlag(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(data), "\n", 3)
	if len(lines) < 2 {
		return ""
	}
	flag, _ := strings.CutPrefix(lines[1], "# with: ")
	if flag == lines[1] {
		return ""
	}
	return flag
}

func firstLineError(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	want, _ := strings.CutPrefix(sc.Text(), "# error: ")
	if want == sc.Text() {
		return ""
	}
	return want
}

// checkFileError checks an error of a services file: one line, "FILE: "
// then where in the file, then want.
func checkFileError(t *testing.T, err error, file, want string) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	rest, ok := strings.CutPrefix(msg, file+": ")
	if !ok {
		t.Errorf("error %q does not start with the file %q", msg, file)
	}
	if !fileLocation.MatchString(rest) && !hasAnyPrefix(rest, wholeFile) {
		t.Errorf("error %q does not say where in the file (services[i].field: or line N:)", msg)
	}
	if !strings.Contains(msg, want) {
		t.Errorf("error %q does not contain %q", msg, want)
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// addr4 is the n-th address after base, so that generated files have as
// many distinct addresses as they need.
func addr4(base string, n int) string {
	b := netip.MustParseAddr(base).As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// genServices writes a file of n services with per backends each: distinct
// backends, or the same per backends in every service when shared.
func genServices(n, per int, shared bool) []byte {
	var b bytes.Buffer
	b.WriteString("services:\n")
	k := 0
	for i := range n {
		fmt.Fprintf(&b, "  - vip: %s\n    backends:\n", addr4("10.100.0.1", i))
		for j := range per {
			if shared {
				k = j
			}
			fmt.Fprintf(&b, "      - %s\n", addr4("10.200.0.1", k))
			k++
		}
	}
	return b.Bytes()
}

// The limits, at them and one past: 256 services, 1024 backends in all
// counting a backend once per service it serves.
func TestServicesLimits(t *testing.T) {
	for _, tc := range []struct {
		name     string
		data     []byte
		services int
		wantErr  string
	}{
		{name: "256 services of 4 backends", data: genServices(MaxServices, 4, false), services: 256},
		{name: "256 services sharing 4 backends", data: genServices(MaxServices, 4, true), services: 256},
		{name: "one service of 1024 backends", data: genServices(1, MaxBackends, false), services: 1},
		{name: "257 services", data: genServices(MaxServices+1, 1, false),
			wantErr: "services: 257 listed, at most 256 are supported"},
		{name: "2 services of 513 backends", data: genServices(2, 513, false),
			wantErr: "services: 1026 backends in all, at most 1024 are supported"},
		{name: "205 services sharing 5 backends", data: genServices(205, 5, true),
			wantErr: "services: 1025 backends in all, at most 1024 are supported (a backend of several services counts once per service)"},
		{name: "one service of 1025 backends", data: genServices(1, MaxBackends+1, false),
			wantErr: "services[0].backends: "},
		{name: "zero bytes", data: nil,
			wantErr: "services: the file is empty; list at least one service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "services.yml")
			if err := os.WriteFile(file, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			c, _, err := Parse([]string{"--iface", "eth0", "--config.file", file}, nil)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("accepted %d services; want %q", len(c.Services), tc.wantErr)
				}
				checkFileError(t, err, file, tc.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if len(c.Services) != tc.services {
				t.Errorf("%d services, want %d", len(c.Services), tc.services)
			}
			total := 0
			for _, s := range c.ServiceList() {
				total += len(s.Backends)
			}
			if total != MaxBackends {
				t.Errorf("%d backends in all, want %d", total, MaxBackends)
			}
		})
	}
}

// What the file leaves out: a backend's weight is DefaultWeight, a written
// 0 stays 0 (drain, not "the default"), and the SNAT address is the VIP.
func TestServicesDefaults(t *testing.T) {
	svcs, err := ParseServices([]byte(`
services:
  - vip: 10.0.0.100
    backends:
      - 10.0.0.2
      - address: 10.0.0.3
      - address: 10.0.0.4
        weight: 0
      - address: 10.0.0.5
        weight: 7
  - vip: 10.0.0.200
    snat: 10.0.0.201
    backends: [10.0.0.2]
`), Default().Service)
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{
		svc("10.0.0.100", "", "10.0.0.2=1", "10.0.0.3=1", "10.0.0.4=0", "10.0.0.5=7"),
		svc("10.0.0.200", "10.0.0.201", "10.0.0.2=1"),
	}
	if !reflect.DeepEqual(svcs, want) {
		t.Errorf("got\n%+v\nwant\n%+v", svcs, want)
	}
}

// --config.file, or its variable, fills Config.Services and leaves the
// flags' Service empty but for its health settings; ServiceList gives the file's services.
func TestParseConfigFile(t *testing.T) {
	const file = "testdata/services-snat.good.yml"
	want := []Service{
		svc("10.0.0.100", "10.0.0.101", "10.0.0.2"),
		svc("10.0.0.200", "10.0.0.101", "10.0.0.3"),
		svc("10.0.0.150", "", "10.0.0.4"),
	}
	for name, p := range map[string]struct {
		args []string
		env  map[string]string
	}{
		"flag": {args: []string{"--iface", "eth0", "--config.file", file}},
		"env":  {env: map[string]string{"ICMPLB_IFACE": "eth0", "ICMPLB_CONFIG_FILE": file}},
	} {
		t.Run(name, func(t *testing.T) {
			c, _, err := Parse(p.args, p.env)
			if err != nil {
				t.Fatal(err)
			}
			if c.ConfigFile != file {
				t.Errorf("ConfigFile %q, want %q", c.ConfigFile, file)
			}
			if !reflect.DeepEqual(c.Services, want) {
				t.Errorf("Services\n%+v\nwant\n%+v", c.Services, want)
			}
			if got := c.ServiceList(); !reflect.DeepEqual(got, want) {
				t.Errorf("ServiceList\n%+v\nwant\n%+v", got, want)
			}
			// The flags give no service, only the health settings
			// that are the file's defaults.
			if !reflect.DeepEqual(c.Service, healthDefaults()) {
				t.Errorf("the flags' service is %+v, want none but the health defaults", c.Service)
			}
		})
	}
}

// Without a file, ServiceList is the one service of the flags, defaults
// applied.
func TestServiceListFromFlags(t *testing.T) {
	c, _, err := Parse([]string{"--iface", "eth0", "--vip", "10.0.0.100", "--backend", "10.0.0.2", "--backend", "10.0.0.3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{svc("10.0.0.100", "", "10.0.0.2", "10.0.0.3")}
	if got := c.ServiceList(); !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceList\n%+v\nwant\n%+v", got, want)
	}
}

// The file lists every service, so a service flag beside it is a mistake,
// named with both; with neither, the error names both ways to give one.
func TestParseFileOrFlags(t *testing.T) {
	const file = "testdata/services-minimal.good.yml"
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{name: "file and --vip", args: []string{"--iface", "eth0", "--config.file", file, "--vip", "10.0.0.100"},
			want: []string{"--config.file", "--vip"}},
		{name: "file and --backend", args: []string{"--iface", "eth0", "--config.file", file, "--backend", "10.0.0.2"},
			want: []string{"--config.file", "--backend"}},
		{name: "file and --snat", args: []string{"--iface", "eth0", "--config.file", file, "--snat", "10.0.0.101"},
			want: []string{"--config.file", "--snat"}},
		{name: "file and ICMPLB_VIP", args: []string{"--iface", "eth0", "--config.file", file},
			env: map[string]string{"ICMPLB_VIP": "10.0.0.100"}, want: []string{"--config.file", "--vip"}},
		{name: "neither", args: []string{"--iface", "eth0"},
			want: []string{"--vip", "ICMPLB_VIP", "--config.file", "ICMPLB_CONFIG_FILE"}},
		{name: "backends without a VIP", args: []string{"--iface", "eth0", "--backend", "10.0.0.2"},
			want: []string{"--vip", "--config.file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := Parse(tc.args, tc.env)
			if err == nil {
				t.Fatalf("accepted: %+v", c.ServiceList())
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

// A file the agent cannot read is named with the flag and variable that
// gave it.
func TestLoadServicesMissingFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "absent.yml")
	_, err := LoadServices(file, Default().Service)
	if err == nil {
		t.Fatal("a missing file loaded")
	}
	for _, w := range []string{file, "--config.file", "ICMPLB_CONFIG_FILE", "no such file"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func cloneConfig(c Config) Config {
	c.Services = append([]Service(nil), c.Services...)
	for i := range c.Services {
		c.Services[i].Backends = append([]Backend(nil), c.Services[i].Backends...)
	}
	c.Backends = append([]Backend(nil), c.Backends...)
	return c
}

// Reload reads the file again: the new services, or an error and the
// running configuration as it was, so that a broken edit changes nothing.
func TestReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "services.yml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2, 10.0.0.3]\n")
	c, _, err := Parse([]string{"--iface", "eth0", "--config.file", file, "--maglev-size", "251"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := cloneConfig(c)

	write("services:\n  - vip: 10.0.0.100\n    backends: [{address: 10.0.0.2, weight: 0}, 10.0.0.4]\n" +
		"  - vip: 10.0.0.200\n    backends: [10.0.0.3]\n")
	n, err := c.Reload()
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{svc("10.0.0.100", "", "10.0.0.2=0", "10.0.0.4"), svc("10.0.0.200", "", "10.0.0.3")}
	if !reflect.DeepEqual(n.Services, want) {
		t.Errorf("reloaded services\n%+v\nwant\n%+v", n.Services, want)
	}
	// Only the services come from the file: every flag stays.
	wantN := cloneConfig(before)
	wantN.Services = want
	if !reflect.DeepEqual(n, wantN) {
		t.Errorf("reloaded config\n%+v\nwant the old one with the new services\n%+v", n, wantN)
	}
	if !reflect.DeepEqual(c, before) {
		t.Errorf("Reload changed its receiver:\n%+v\nwas\n%+v", c, before)
	}

	for _, tc := range []struct {
		name, data, want string
	}{
		{name: "weight", data: "services:\n  - vip: 10.0.0.100\n    backends: [{address: 10.0.0.2, weight: 1001}]\n",
			want: file + ": services[0].backends[0].weight: must be 0..1000"},
		{name: "syntax", data: "services:\n  - vip: [10.0.0.100\n", want: file + ": line "},
		{name: "empty", data: "", want: file + ": services: the file is empty"},
		{name: "duplicate VIP", data: "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n  - vip: 10.0.0.100\n    backends: [10.0.0.3]\n",
			want: file + ": services[1].vip: 10.0.0.100 is also the VIP of services[0]"},
		// Fine on its own, but not with the running flags: the table is
		// smaller than the service's backends.
		{name: "maglev", data: string(genServices(1, 252, false)), want: "--maglev-size 251 (ICMPLB_MAGLEV_SIZE): must be a prime in 252.."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(tc.data)
			kept := cloneConfig(n)
			got, err := n.Reload()
			if err == nil {
				t.Fatalf("a broken file reloaded: %+v", got.Services)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if !reflect.DeepEqual(got, kept) {
				t.Errorf("Reload returned\n%+v\nwant the running config\n%+v", got, kept)
			}
			if !reflect.DeepEqual(n, kept) {
				t.Errorf("Reload changed its receiver:\n%+v\nwas\n%+v", n, kept)
			}
		})
	}

	flags, _, err := Parse([]string{"--iface", "eth0", "--vip", "10.0.0.100", "--backend", "10.0.0.2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := flags.Reload(); err == nil || !strings.Contains(err.Error(), "--config.file") {
		t.Errorf("Reload without a file: %v, want an error naming --config.file", err)
	}
}

// servicesPage is the page users read the file's format in.
const servicesPage = "../docs/services.md"

var (
	yamlFence = regexp.MustCompile("(?s)```yaml\n(.*?)```")
	pageError = regexp.MustCompile("`[^`]*?: (services\\[[^`]*)`")
)

// The page's example is a services file that loads to what its comments
// say, and the errors it quotes are the ones testdata/*.bad.yml produce.
func TestServicesPage(t *testing.T) {
	data, err := os.ReadFile(servicesPage)
	if err != nil {
		t.Fatal(err)
	}
	fences := yamlFence.FindAllSubmatch(data, -1)
	if len(fences) != 1 {
		t.Fatalf("%s: %d yaml examples, want the one complete file", servicesPage, len(fences))
	}
	svcs, err := ParseServices(fences[0][1], Default().Service)
	if err != nil {
		t.Fatalf("%s: the example is refused: %v", servicesPage, err)
	}
	want := []Service{
		svc("10.0.0.100", "", "10.0.0.2=1", "10.0.0.3=3", "10.0.0.4=0"),
		svc("10.0.0.200", "10.0.0.201", "10.0.0.3", "10.0.0.5"),
	}
	want[1].Outlier.MaxP99RTT, want[1].Probe.Interval, want[1].AllDown = 200*time.Millisecond, 0, AllDownPass
	if !reflect.DeepEqual(svcs, want) {
		t.Errorf("%s: the example loads as\n%+v\nwant\n%+v", servicesPage, svcs, want)
	}
	checkHealthTable(t, string(data))

	files, err := filepath.Glob("testdata/*.bad.yml")
	if err != nil {
		t.Fatal(err)
	}
	var errs []string
	for _, f := range files {
		errs = append(errs, firstLineError(t, f))
	}
	quoted := pageError.FindAllSubmatch(data, -1)
	if len(quoted) == 0 {
		t.Errorf("%s quotes no error of the file", servicesPage)
	}
	for _, q := range quoted {
		found := false
		for _, e := range errs {
			found = found || strings.Contains(e, string(q[1]))
		}
		if !found {
			t.Errorf("%s quotes %q, the error of no testdata/*.bad.yml", servicesPage, q[1])
		}
	}
}

// The health keys load to what they say; a service without them has the
// flags' values, and probes off (interval 0) leave their other keys
// unchecked.
func TestServicesHealth(t *testing.T) {
	svcs, err := LoadServices("testdata/services-health.good.yml", Default().Service)
	if err != nil {
		t.Fatal(err)
	}
	want0 := svc("10.0.0.100", "", "10.0.0.2", "10.0.0.3")
	want0.Outlier = Outlier{
		Window: 30 * time.Second, MinRequests: 50, MaxLossRatio: 0.05, MaxP99RTT: 200 * time.Millisecond,
		BaseEjectionTime: 10 * time.Second, MaxEjectionTime: time.Hour, MaxEjectionPercent: 100,
	}
	want0.Probe = Probe{Interval: 2 * time.Second, Timeout: 500 * time.Millisecond, Rise: 3, Fall: 5}
	want0.AllDown = AllDownPass
	want1 := svc("10.0.0.200", "", "10.0.0.4")
	want1.Outlier.MaxLossRatio, want1.Outlier.MaxEjectionPercent = 1, 0
	want1.Probe = Probe{Interval: 0, Timeout: time.Hour, Rise: 0, Fall: DefaultProbeFall}
	if want := []Service{want0, want1}; !reflect.DeepEqual(svcs, want) {
		t.Errorf("got\n%+v\nwant\n%+v", svcs, want)
	}
}

// The health flags (and their variables) are the defaults of every
// service of the file: a key the file leaves out takes the flag's value,
// at start and on reload; a key it gives wins. Without such flags, the
// values are the constants'.
func TestServicesHealthDefaults(t *testing.T) {
	const none = "testdata/services-health-defaults.good.yml"
	c, _, err := Parse([]string{"--iface", "eth0", "--config.file", none}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range c.Services {
		if s.Outlier != c.Outlier || s.Probe != c.Probe || s.AllDown != c.AllDown {
			t.Errorf("services[%d] health %+v %+v %q, want the flags' %+v %+v %q", i, s.Outlier, s.Probe, s.AllDown, c.Outlier, c.Probe, c.AllDown)
		}
		if s.Outlier != DefaultOutlier() || s.Probe != DefaultProbe() || s.AllDown != DefaultAllDown {
			t.Errorf("services[%d] health %+v %+v %q, want the defaults", i, s.Outlier, s.Probe, s.AllDown)
		}
	}

	const some = "testdata/services-health.good.yml"
	c, _, err = Parse([]string{"--iface", "eth0", "--config.file", some, "--outlier.window", "20s", "--probe.fall", "7"},
		map[string]string{"ICMPLB_ALL_DOWN": AllDownPass})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string, svcs []Service) {
		t.Helper()
		// services[0] gives every key; services[1] none of these.
		if o := svcs[0].Outlier.Window; o != 30*time.Second {
			t.Errorf("%s: services[0].outlier.window %v, want the file's 30s", when, o)
		}
		if o := svcs[1].Outlier.Window; o != 20*time.Second {
			t.Errorf("%s: services[1].outlier.window %v, want --outlier.window 20s", when, o)
		}
		if f := svcs[1].Probe.Fall; f != 7 {
			t.Errorf("%s: services[1].probe.fall %d, want --probe.fall 7", when, f)
		}
		if f := svcs[0].Probe.Fall; f != 5 {
			t.Errorf("%s: services[0].probe.fall %d, want the file's 5", when, f)
		}
		if a := svcs[1].AllDown; a != AllDownFailOpen {
			t.Errorf("%s: services[1].all_down %q, want the file's fail-open", when, a)
		}
		if a := svcs[0].AllDown; a != AllDownPass {
			t.Errorf("%s: services[0].all_down %q, want the file's pass", when, a)
		}
	}
	check("start", c.Services)
	n, err := c.Reload()
	if err != nil {
		t.Fatal(err)
	}
	check("reload", n.Services)

	c, _, err = Parse([]string{"--iface", "eth0", "--config.file", none, "--outlier.window", "20s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range c.Services {
		if s.Outlier.Window != 20*time.Second {
			t.Errorf("services[%d].outlier.window %v, want --outlier.window 20s", i, s.Outlier.Window)
		}
	}
}

// A file value that breaks a bound only with an inherited flag value is
// the file's error, and a flag out of bounds is the flag's, though the
// file sets every service's value itself.
func TestServicesHealthFlagAndFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "services.yml")
	for _, tc := range []struct {
		name, data string
		args       []string
		want       string
	}{
		{name: "file interval below the flag's timeout",
			data: "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n    probe: {interval: 500ms}\n",
			want: file + ": services[0].probe.timeout: must be at most probe.interval 500ms"},
		{name: "file base above the flag's max",
			data: "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n    outlier: {base_ejection_time: 1h}\n",
			want: file + ": services[0].outlier.max_ejection_time: must be at least outlier.base_ejection_time 1h"},
		{name: "flag p99 over the loss timeout, file's own p99",
			data: "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n    outlier: {max_p99_rtt: 100ms}\n",
			args: []string{"--outlier.max-p99-rtt", "1s"},
			want: "--outlier.max-p99-rtt 1s (ICMPLB_OUTLIER_MAX_P99_RTT): must be 0 (off) or at least 1ms and below --loss-timeout 1s"},
		{name: "flag rise 0, file's own rise",
			data: "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n    probe: {rise: 2}\n",
			args: []string{"--probe.rise", "0"},
			want: "--probe.rise 0 (ICMPLB_PROBE_RISE): must be 1..100"},
		{name: "p99 over a longer loss timeout in the second service",
			data: "services:\n  - vip: 10.0.0.100\n    backends: [10.0.0.2]\n    outlier: {max_p99_rtt: 2s}\n" +
				"  - vip: 10.0.0.200\n    backends: [10.0.0.3]\n    outlier: {max_p99_rtt: 3s}\n",
			args: []string{"--loss-timeout", "3s", "--nat-idle", "6s"},
			want: file + ": services[1].outlier.max_p99_rtt: must be 0 (off) or at least 1ms and below --loss-timeout 3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(file, []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := Parse(append([]string{"--iface", "eth0", "--config.file", file}, tc.args...), nil)
			if err == nil {
				t.Fatalf("accepted; want %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error %q does not start with %q", err, tc.want)
			}
		})
	}
}

var healthRow = regexp.MustCompile("^\\| `([a-z0-9_.]+)` \\| `--([a-z0-9.-]+)`, `([^`]*)`")

// checkHealthTable checks the page's table of health keys: a row per key
// of the file, each naming its flag and that flag's default.
func checkHealthTable(t *testing.T, page string) {
	t.Helper()
	var s Service
	keys := map[string]healthKey{keyAllDown.key: keyAllDown}
	for _, k := range append(s.outlierKeys(), s.probeKeys()...) {
		keys[k.key] = k
	}
	defaults := map[string]string{}
	for _, f := range Flags() {
		defaults["--"+f.Name] = f.Default
	}
	for line := range strings.SplitSeq(page, "\n") {
		m := healthRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		k, ok := keys[m[1]]
		if !ok {
			t.Errorf("%s: a row for %s, which is no health key", servicesPage, m[1])
			continue
		}
		delete(keys, m[1])
		if flag := "--" + m[2]; flag != k.set.Flag {
			t.Errorf("%s: %s's flag %s, want %s", servicesPage, m[1], flag, k.set.Flag)
		}
		if d := defaults[k.set.Flag]; m[3] != d {
			t.Errorf("%s: %s's default `%s`, want `%s`", servicesPage, m[1], m[3], d)
		}
	}
	for key := range keys {
		t.Errorf("%s: no row for the health key %s", servicesPage, key)
	}
}
