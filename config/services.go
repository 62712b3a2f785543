// SPDX-License-Identifier: MIT

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The services file (--config.file) lists the services; every other setting
// stays a flag, so that one file can be shared by agents on several
// interfaces:
//
//	services:
//	  - vip: 10.0.0.100
//	    snat: 10.0.0.101      # optional, default the VIP
//	    backends:
//	      - 10.0.0.2          # weight 1
//	      - address: 10.0.0.3
//	        weight: 2         # 0 drains
type file struct {
	Services []fileService `yaml:"services"`
}

type fileService struct {
	VIP      string        `yaml:"vip"`
	SNAT     string        `yaml:"snat"`
	Backends []fileBackend `yaml:"backends"`
}

// fileBackend is a backend written as its address alone or as a mapping
// with its weight; a weight left out is DefaultWeight, a written 0 drains.
type fileBackend struct {
	Address string
	Weight  *int
	line    int
}

func (b *fileBackend) UnmarshalYAML(n *yaml.Node) error {
	b.line = n.Line
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&b.Address)
	case yaml.MappingNode:
		var m struct {
			Address string `yaml:"address"`
			Weight  *int   `yaml:"weight"`
		}
		// Decode does not inherit the decoder's KnownFields: check keys
		// here so that a typo ("wieght") is an error, not weight 1.
		for i := 0; i < len(n.Content); i += 2 {
			if k := n.Content[i].Value; k != "address" && k != "weight" {
				return fmt.Errorf("line %d: unknown field %q of a backend (want address, weight)", n.Content[i].Line, k)
			}
			// yaml.v3 truncates a float into an int: 0.5 would drain.
			if v := n.Content[i+1]; n.Content[i].Value == "weight" && v.ShortTag() == "!!float" {
				return fmt.Errorf("line %d: weight %s is not a whole number 0..%d", v.Line, v.Value, MaxWeight)
			}
		}
		if err := n.Decode(&m); err != nil {
			return err
		}
		b.Address, b.Weight = m.Address, m.Weight
		return nil
	}
	return fmt.Errorf("line %d: a backend is an address or a mapping of address and weight", n.Line)
}

// LoadServices reads and checks a services file: each error names the file
// and the field (services[1].backends[0].weight: must be 0..1000).
func LoadServices(path string) ([]Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s %s (%s): %w", SetFile.Flag, path, SetFile.Env, err)
	}
	svcs, err := ParseServices(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return svcs, nil
}

// ParseServices decodes and checks the contents of a services file.
func ParseServices(data []byte) ([]Service, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("services: the file is empty; list at least one service")
		}
		return nil, oneLine(err)
	}
	if err := dec.Decode(new(file)); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document: keep every service in one list")
	}
	svcs := make([]Service, len(f.Services))
	for i, fs := range f.Services {
		s := &svcs[i]
		var err error
		if s.VIP, err = parseAddr(fs.VIP); err != nil {
			return nil, fmt.Errorf("services[%d].vip: %w", i, err)
		}
		if fs.SNAT != "" {
			if s.SNAT, err = parseAddr(fs.SNAT); err != nil {
				return nil, fmt.Errorf("services[%d].snat: %w", i, err)
			}
		}
		for j, fb := range fs.Backends {
			b := Backend{Weight: DefaultWeight}
			if b.Addr, err = parseAddr(fb.Address); err != nil {
				return nil, fmt.Errorf("services[%d].backends[%d].address: %w", i, j, err)
			}
			if fb.Weight != nil {
				b.Weight = *fb.Weight
			}
			s.Backends = append(s.Backends, b)
		}
		*s = s.withDefaults()
	}
	if err := validateServices(svcs, true); err != nil {
		return nil, err
	}
	return svcs, nil
}

func parseAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, errors.New("missing")
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

// oneLine keeps the first line of a YAML error, which yaml.v3 spreads over
// lines when a file has several type errors.
func oneLine(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n")
	msg, _, _ = strings.Cut(strings.TrimSpace(msg), "\n")
	return errors.New(msg)
}

// where names a service's fields in errors: the flags and variable that set
// them, or their path in the services file.
type where struct {
	file bool
	svc  int
}

// errorf reports a problem with field (vip, backends[2], ...) whose value
// is what: "backend 10.0.0.2 is given twice (--backend, ICMPLB_BACKENDS)"
// from flags, "services[0].backends[1]: 10.0.0.2 is given twice" from the file.
func (w where) errorf(field, what string, set Setting, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if w.file {
		return fmt.Errorf("services[%d].%s: %s", w.svc, field, msg)
	}
	// A tail after ";" explains; the setting goes before it.
	msg, tail, _ := strings.Cut(msg, ";")
	if tail != "" {
		tail = ";" + tail
	}
	return fmt.Errorf("%s %s (%s, %s)%s", what, msg, set.Flag, set.Env, tail)
}

// validateServices checks each service and what they must not share.
func validateServices(svcs []Service, fromFile bool) error {
	if fromFile && len(svcs) == 0 {
		return errors.New("services: none listed; list at least one service")
	}
	if len(svcs) > MaxServices {
		return fmt.Errorf("services: %d listed, at most %d are supported", len(svcs), MaxServices)
	}
	vips := map[netip.Addr]int{}
	fronts := map[netip.Addr]string{}
	total := 0
	for i, s := range svcs {
		s = s.withDefaults()
		w := where{file: fromFile, svc: i}
		if err := s.validate(w); err != nil {
			return err
		}
		if j, dup := vips[s.VIP]; dup {
			return w.errorf("vip", "VIP", SetVIP, "%s is also the VIP of services[%d]; one service per VIP", s.VIP, j)
		}
		vips[s.VIP] = i
		fronts[s.VIP] = fmt.Sprintf("the VIP of services[%d]", i)
		if _, ok := fronts[s.SNAT]; !ok {
			fronts[s.SNAT] = fmt.Sprintf("the SNAT address of services[%d]", i)
		}
		total += len(s.Backends)
	}
	if total > MaxBackends {
		return fmt.Errorf("services: %d backends in all, at most %d are supported (a backend of several services counts once per service)", total, MaxBackends)
	}
	// A backend that is another service's front would receive its own
	// balanced requests and replies.
	for i, s := range svcs {
		for j, b := range s.Backends {
			if f, ok := fronts[b.Addr]; ok {
				return where{file: fromFile, svc: i}.errorf(fmt.Sprintf("backends[%d]", j), "backend", SetBackend,
					"%s is %s; a backend must be another host", b.Addr, f)
			}
		}
	}
	return nil
}

// validate checks one service with its defaults applied.
func (s Service) validate(w where) error {
	if err := unicastV4(w, "vip", "VIP", SetVIP, s.VIP); err != nil {
		return err
	}
	if err := unicastV4(w, "snat", "SNAT address", SetSNAT, s.SNAT); err != nil {
		return err
	}
	if len(s.Backends) == 0 {
		if w.file {
			return w.errorf("backends", "", SetBackend, "none listed; give at least one backend")
		}
		return fmt.Errorf("no backends: give at least one %s (%s, comma-separated)", SetBackend.Flag, SetBackend.Env)
	}
	if len(s.Backends) > MaxBackends {
		return w.errorf("backends", "backends:", SetBackend, "%d given; at most %d are supported", len(s.Backends), MaxBackends)
	}
	seen := make(map[netip.Addr]bool, len(s.Backends))
	for i, b := range s.Backends {
		field := fmt.Sprintf("backends[%d]", i)
		if err := unicastV4(w, field, "backend", SetBackend, b.Addr); err != nil {
			return err
		}
		if b.Weight < 0 || b.Weight > MaxWeight {
			return w.errorf(field+".weight", fmt.Sprintf("backend %s weight", b.Addr), SetBackend, "must be 0..%d", MaxWeight)
		}
		if seen[b.Addr] {
			return w.errorf(field, "backend", SetBackend, "%s is given twice", b.Addr)
		}
		seen[b.Addr] = true
		if b.Addr == s.VIP {
			return w.errorf(field, "backend", SetBackend, "%s is the VIP itself; a backend must be another host", b.Addr)
		}
		if b.Addr == s.SNAT {
			return w.errorf(field, "backend", SetBackend, "%s is the SNAT address; a backend must be another host", b.Addr)
		}
	}
	return nil
}

func unicastV4(w where, field, what string, s Setting, a netip.Addr) error {
	switch {
	case !a.IsValid():
		if w.file {
			return w.errorf(field, what, s, "missing")
		}
		return fmt.Errorf("no %s given: set %s (%s)", what, s.Flag, s.Env)
	case !a.Is4():
		return w.errorf(field, what, s, "%s is not an IPv4 address; icmplb balances ICMPv4 echo", a)
	// 0/8 is "this network", 240/4 reserved and 255.255.255.255 the
	// limited broadcast: the data plane refuses them as sources too.
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a.As4()[0] == 0, a.As4()[0] >= 240:
		return w.errorf(field, what, s, "%s is not a unicast host address", a)
	}
	return nil
}

// Reload reads the services file again: the new configuration, or an error
// and c unchanged in meaning. Only the services change on reload; every
// other setting is a flag of the running process.
func (c Config) Reload() (Config, error) {
	if c.ConfigFile == "" {
		return c, fmt.Errorf("no services file to reload: the services come from flags; start with %s (%s) to reload them", SetFile.Flag, SetFile.Env)
	}
	svcs, err := LoadServices(c.ConfigFile)
	if err != nil {
		return c, err
	}
	n := c
	n.Services = svcs
	if err := n.Validate(); err != nil {
		return c, err
	}
	return n.WithDefaults(), nil
}
