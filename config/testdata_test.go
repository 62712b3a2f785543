// SPDX-License-Identifier: MIT

package config

import (
	"bufio"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Each testdata/*.args file is a way of starting the agent, as data:
//
//	# error: the one-line error it must give (bad files only)
//	ICMPLB_NAME=value    an environment variable (a line starting with ICMPLB_)
//	--flag               one argument per line, spaces kept
//	value
//
// *.good.args must parse and validate; *.bad.args must fail with one line
// that contains the error given.
func TestTestdata(t *testing.T) {
	files, err := filepath.Glob("testdata/*.args")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	var good, bad int
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".args"), func(t *testing.T) {
			wantErr, env, args := readArgs(t, file)
			_, _, err := Parse(args, env)
			switch {
			case strings.HasSuffix(file, ".good.args"):
				good++
				if err != nil {
					t.Errorf("refused: %v", err)
				}
			case strings.HasSuffix(file, ".bad.args"):
				bad++
				if wantErr == "" {
					t.Fatal("a bad example without its `# error:` line")
				}
				if err == nil {
					t.Fatalf("accepted; want %q", wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				if !strings.Contains(err.Error(), wantErr) {
					t.Errorf("error %q does not contain %q", err, wantErr)
				}
			default:
				t.Fatal("name it *.good.args or *.bad.args")
			}
		})
	}
	if good == 0 || bad == 0 {
		t.Errorf("%d good and %d bad examples; want both", good, bad)
	}
}

func readArgs(t *testing.T, file string) (wantErr string, env map[string]string, args []string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# error: "):
			wantErr = strings.TrimPrefix(line, "# error: ")
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "ICMPLB_"):
			k, v, _ := strings.Cut(line, "=")
			env[k] = v
		default:
			args = append(args, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return wantErr, env, args
}

// Parsing the seed's flags gives Default with the seed's addresses: the
// tags' defaults are this package's constants.
func TestParseDefaultsAreDefault(t *testing.T) {
	got, log, err := Parse([]string{"--iface", "eth0", "--vip", "10.0.0.100", "--backend", "10.0.0.2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Iface, want.VIP, want.Backends = "eth0", netip.MustParseAddr("10.0.0.100"), backends("10.0.0.2")
	want.NeighInterval = 0 // not a flag: WithDefaults fills it
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse gives\n%+v\nwant Default()\n%+v", got, want)
	}
	if log.Level != DefaultLogLevel || log.Format != DefaultLogFormat {
		t.Errorf("log %+v, want level %v format %q", log, DefaultLogLevel, DefaultLogFormat)
	}
}

// Spaces around list elements are the user's formatting, not addresses.
func TestParseBackendsWithSpaces(t *testing.T) {
	for _, v := range []string{"10.0.0.2, 10.0.0.3", " 10.0.0.2 ,\t10.0.0.3 ", "10.0.0.2,10.0.0.3"} {
		c, _, err := Parse(nil, map[string]string{"ICMPLB_IFACE": "eth0", "ICMPLB_VIP": " 10.0.0.100", "ICMPLB_BACKENDS": v})
		if err != nil {
			t.Errorf("ICMPLB_BACKENDS=%q: %v", v, err)
			continue
		}
		want := backends("10.0.0.2", "10.0.0.3")
		if !reflect.DeepEqual(c.Backends, want) || c.VIP != netip.MustParseAddr("10.0.0.100") {
			t.Errorf("ICMPLB_BACKENDS=%q: backends %v, VIP %v", v, c.Backends, c.VIP)
		}
	}
}

// Flags lists every setting with its variable, from the tags.
func TestFlags(t *testing.T) {
	byName := map[string]Flag{}
	for _, f := range Flags() {
		byName[f.Name] = f
		if f.Env != "ICMPLB_"+strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(f.Name)) && f.Name != "backend" {
			t.Errorf("--%s has variable %q, not named after it", f.Name, f.Env)
		}
	}
	for name, want := range map[string]Flag{
		"iface":               {Name: "iface", Env: "ICMPLB_IFACE", Required: true},
		"vip":                 {Name: "vip", Env: "ICMPLB_VIP"},
		"config.file":         {Name: "config.file", Env: "ICMPLB_CONFIG_FILE"},
		"backend":             {Name: "backend", Env: "ICMPLB_BACKENDS"},
		"conntrack-size":      {Name: "conntrack-size", Env: "ICMPLB_CONNTRACK_SIZE", Default: "65536"},
		"web.listen-address":  {Name: "web.listen-address", Env: "ICMPLB_WEB_LISTEN_ADDRESS", Default: DefaultListenAddress},
		"web.max-connections": {Name: "web.max-connections", Env: "ICMPLB_WEB_MAX_CONNECTIONS", Default: "64"},
		"log.format":          {Name: "log.format", Env: "ICMPLB_LOG_FORMAT", Default: "text"},
	} {
		got := byName[name]
		got.Help = ""
		if got != want {
			t.Errorf("--%s: %+v, want %+v", name, got, want)
		}
	}
	want := countFlags(reflect.TypeFor[Config]()) + countFlags(reflect.TypeFor[Log]())
	if len(byName) != want {
		t.Errorf("%d flags, want %d: one per field of Config and Log, of the structs they embed in their place", len(byName), want)
	}
}

// countFlags counts the fields of t that kong makes flags: every field but
// those tagged kong:"-", the fields of an embedded struct (anonymous, as
// Service in Config, or tagged embed:"", as Outlier in Service) in its
// place.
func countFlags(t reflect.Type) int {
	n := 0
	for i := range t.NumField() {
		f := t.Field(i)
		_, embed := f.Tag.Lookup("embed")
		switch {
		case f.Tag.Get("kong") == "-":
		case f.Anonymous || embed:
			n += countFlags(f.Type)
		default:
			n++
		}
	}
	return n
}
