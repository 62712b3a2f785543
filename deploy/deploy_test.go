// SPDX-License-Identifier: MIT

package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/version"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"go.yaml.in/yaml/v3"
	"golang.org/x/mod/modfile"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/syntax"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/icmplb/icmplb/config"
)

var update = flag.Bool("update", false,
	"rewrite kubernetes/monitoring/prometheusrule.yaml from dashboards/icmplb-rules.yml")

// Paths, relative to this package's directory (the test's working directory).
const (
	repoRoot             = ".."
	dockerfile           = "Dockerfile"
	makefile             = "../Makefile"
	composeFile          = "compose.yaml"
	promConfig           = "prometheus/prometheus.yml"
	tempoConfig          = "tempo/tempo.yaml"
	containersDoc        = "../docs/containers-and-kubernetes.md"
	k8sDir               = "kubernetes"
	monitoringDir        = "kubernetes/monitoring"
	ruleManifest         = "kubernetes/monitoring/prometheusrule.yaml"
	rulesFile            = "../dashboards/icmplb-rules.yml"
	dashboardsDir        = "../dashboards"
	namespace            = "icmplb"
	containersDocHeading = "# Containers and Kubernetes"
	dockerBuildCmd       = "docker build -f deploy/Dockerfile"
)

// requiredCaps are the capabilities icmplb gets, everywhere: in the
// Dockerfile's setcap, compose's cap_add and the manifests' capabilities.add.
// Why these three is explained in the Dockerfile and docs/containers-and-kubernetes.md.
var requiredCaps = []string{"BPF", "NET_ADMIN", "PERFMON"}

// otelVars are the OTEL_* variables icmplb's trace pipeline honours: those
// the OTLP trace exporters (otlptracehttp, otlptracegrpc), the resource
// detector (resource.WithFromEnv) and the batch span processor of the OTel Go
// SDK read (checked against the SDK's source, v1.47), and the protocol switch
// of exporter/otel.go. Not OTEL_TRACES_SAMPLER: exporter/otel.go samples
// everything, the kernel has already sampled; not OTEL_SDK_DISABLED, which
// the Go SDK ignores.
var otelVars = set(
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
	"OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
	"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
	"OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
	"OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
	"OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
	"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
	"OTEL_EXPORTER_OTLP_CLIENT_KEY", "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
	"OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT",
	"OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)

// helperVars are the only other variables the manifests may set: the
// Downward API values OTEL_RESOURCE_ATTRIBUTES is composed of.
var helperVars = set("NODE_NAME", "POD_NAME", "POD_NAMESPACE")

// examples stand in for values compose.yaml leaves to the user
// (${VAR:?message}), so that the configuration check sees a full set.
var examples = map[string]string{
	"ICMPLB_VIP":      "192.0.2.100",
	"ICMPLB_BACKENDS": "192.0.2.11,192.0.2.12",
}

// fieldRefExamples stand in for Downward API values.
var fieldRefExamples = map[string]string{
	"status.podIP":       "10.244.1.23",
	"spec.nodeName":      "node-1",
	"metadata.name":      "icmplb-abcde",
	"metadata.namespace": namespace,
}

func set(items ...string) map[string]bool {
	m := make(map[string]bool, len(items))
	for _, s := range items {
		m[s] = true
	}
	return m
}

// ---- The binary's flags and variables ------------------------------------------

type cliFlag struct {
	name string // without "--"
	env  string // ICMPLB_*, or "" (--help)
}

type cliModel struct {
	flags    map[string]cliFlag // by name
	envs     map[string]cliFlag // by variable
	required []string           // flags the usage line requires
}

// icmplbCLI is every flag and variable of the agent, from the config package
// that kong parses them into.
func icmplbCLI(t *testing.T) cliModel {
	t.Helper()
	m := cliModel{flags: map[string]cliFlag{}, envs: map[string]cliFlag{}}
	for _, f := range config.Flags() {
		cf := cliFlag{name: f.Name, env: f.Env}
		m.flags[f.Name] = cf
		if f.Env != "" {
			m.envs[f.Env] = cf
		}
		if f.Required {
			m.required = append(m.required, f.Name)
		}
	}
	return m
}

func TestHelpParsed(t *testing.T) {
	c := icmplbCLI(t)
	for flag, env := range map[string]string{
		"iface": "ICMPLB_IFACE", "vip": "ICMPLB_VIP", "backend": "ICMPLB_BACKENDS",
		"log.format": "ICMPLB_LOG_FORMAT", "web.listen-address": "ICMPLB_WEB_LISTEN_ADDRESS",
		"web.config.file": "ICMPLB_WEB_CONFIG_FILE", "web.max-connections": "ICMPLB_WEB_MAX_CONNECTIONS",
	} {
		if got := c.flags[flag].env; got != env {
			t.Errorf("--%s: variable %q, want %q", flag, got, env)
		}
	}
	if !slices.Contains(c.required, "iface") || !slices.Contains(c.required, "vip") {
		t.Errorf("required flags %v, want iface and vip among them", c.required)
	}
}

// ---- Loading the files ---------------------------------------------------------

// yamlFiles lists every *.yaml and *.yml under deploy/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// decodeAll decodes every document of a YAML stream; empty documents are
// skipped.
func decodeAll(data []byte) ([]*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(n.Content) > 0 && n.Content[0].Kind != 0 && !(n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!null") {
			docs = append(docs, &n)
		}
	}
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// k8sDoc is one Kubernetes object of a manifest, decoded strictly into the
// API's own types (k8s.io/api): an unknown or misspelt field is an error.
type k8sDoc struct {
	file string
	node *yaml.Node
	obj  k8sObject
}

// k8sObject is what the tests read of any object; the typed object itself
// was decoded strictly.
type k8sObject struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	Data       map[string]string       // ConfigMap
	Template   *corev1.PodTemplateSpec // DaemonSet, Deployment
	PodMonitor *podMonitorSpec
}

// podMonitorSpec is the part of the Prometheus Operator's PodMonitor the
// manifests use: the operator's Go module (and its dependency on the whole
// Kubernetes client) is not worth three fields; strict decoding still
// refuses any field not listed here.
type podMonitorSpec struct {
	Selector          metav1.LabelSelector `json:"selector"`
	NamespaceSelector struct {
		Any        bool     `json:"any"`
		MatchNames []string `json:"matchNames"`
	} `json:"namespaceSelector"`
	PodMetricsEndpoints []struct {
		Port     string `json:"port"`
		Path     string `json:"path"`
		Interval string `json:"interval"`
	} `json:"podMetricsEndpoints"`
	JobLabel string `json:"jobLabel"`
}

// decodeK8s decodes one object strictly into the type of its kind.
func decodeK8s(n *yaml.Node) (k8sObject, error) {
	raw, err := yaml.Marshal(n)
	if err != nil {
		return k8sObject{}, err
	}
	var tm metav1.TypeMeta
	if err := k8syaml.Unmarshal(raw, &tm); err != nil {
		return k8sObject{}, err
	}
	strict := func(v any) error { return k8syaml.UnmarshalStrict(raw, v) }
	o := k8sObject{TypeMeta: tm}
	switch tm.Kind {
	case "Namespace":
		var v corev1.Namespace
		err, o.ObjectMeta = strict(&v), v.ObjectMeta
	case "ServiceAccount":
		var v corev1.ServiceAccount
		err, o.ObjectMeta = strict(&v), v.ObjectMeta
	case "ConfigMap":
		var v corev1.ConfigMap
		err, o.ObjectMeta, o.Data = strict(&v), v.ObjectMeta, v.Data
	case "DaemonSet":
		var v appsv1.DaemonSet
		err, o.ObjectMeta, o.Template = strict(&v), v.ObjectMeta, &v.Spec.Template
	case "Deployment":
		var v appsv1.Deployment
		err, o.ObjectMeta, o.Template = strict(&v), v.ObjectMeta, &v.Spec.Template
	case "PodMonitor":
		var v struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
			Spec              podMonitorSpec `json:"spec"`
		}
		err, o.ObjectMeta, o.PodMonitor = strict(&v), v.ObjectMeta, &v.Spec
	case "PrometheusRule":
		var v struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
			Spec              struct {
				Groups []map[string]any `json:"groups"`
			} `json:"spec"`
		}
		err, o.ObjectMeta = strict(&v), v.ObjectMeta
	default:
		return o, fmt.Errorf("kind %q has no typed model in the test: add it to decodeK8s", tm.Kind)
	}
	return o, err
}

// podSpec is the pod template's spec, or an empty one for objects that run
// no pods.
func (o k8sObject) podSpec() corev1.PodSpec {
	if o.Template == nil {
		return corev1.PodSpec{}
	}
	return o.Template.Spec
}

// k8sDocs loads every object of the manifests under kubernetes/, except the
// kustomizations.
func k8sDocs(t *testing.T) []k8sDoc {
	t.Helper()
	var docs []k8sDoc
	for _, f := range yamlFiles(t) {
		if !strings.HasPrefix(f, k8sDir+string(filepath.Separator)) || filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := decodeAll(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, n := range nodes {
			obj, err := decodeK8s(n)
			if err != nil {
				t.Fatalf("%s line %d: %v", f, n.Line, err)
			}
			docs = append(docs, k8sDoc{file: f, node: n, obj: obj})
		}
	}
	return docs
}

// ---- Compose model -------------------------------------------------------------

// composeFileT is a compose project as Docker Compose loads it
// (compose-go: schema validation, interpolation, paths resolved).
type composeFileT struct {
	Services map[string]composeService
}

type composeService struct{ types.ServiceConfig }

// loadComposeData loads a compose file's content as `docker compose` would
// from deploy/, with examples standing in for what the user must set.
func loadComposeData(t *testing.T, data []byte) composeFileT {
	t.Helper()
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  wd,
		ConfigFiles: []types.ConfigFile{{Filename: composeFile, Content: data}},
		Environment: types.Mapping(examples),
	}, func(o *loader.Options) { o.SetProjectName("icmplb", true) })
	if err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	c := composeFileT{Services: map[string]composeService{}}
	for name, s := range p.Services {
		c.Services[name] = composeService{s}
	}
	return c
}

func loadCompose(t *testing.T) composeFileT {
	t.Helper()
	data, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	c := loadComposeData(t, data)
	for _, s := range []string{"icmplb", "prometheus", "grafana"} {
		if _, ok := c.Services[s]; !ok {
			t.Fatalf("%s: no service %q", composeFile, s)
		}
	}
	return c
}

// hostPath maps a path inside a compose service's container to the file on
// this machine it is bind-mounted from.
func (s composeService) hostPath(p string) (string, bool) {
	best, bestLen := "", -1
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if p == v.Target || strings.HasPrefix(p, strings.TrimSuffix(v.Target, "/")+"/") {
			if len(v.Target) > bestLen {
				best, bestLen = filepath.Join(v.Source, strings.TrimPrefix(p, v.Target)), len(v.Target)
			}
		}
	}
	return best, bestLen >= 0
}

// published maps the host ports a service publishes to its container ports.
func (s composeService) published() map[string]string {
	m := map[string]string{}
	for _, p := range s.Ports {
		m[p.Published] = strconv.Itoa(int(p.Target))
	}
	return m
}

// ---- Agent configurations ------------------------------------------------------

// agentConfig is how one place runs icmplb: its variables with their values
// and its arguments.
type agentConfig struct {
	where  string
	env    map[string]string // resolved values
	args   []string
	uid    int // -1: the image's (non-root) user
	mounts map[string]string
	// icmplb's capabilities: added and dropped.
	capAdd, capDrop []string
	privileged      bool
}

func composeAgent(t *testing.T, c composeFileT) agentConfig {
	t.Helper()
	s := c.Services["icmplb"]
	a := agentConfig{where: composeFile + " service icmplb", env: map[string]string{}, uid: -1,
		mounts: map[string]string{}, capAdd: s.CapAdd, capDrop: s.CapDrop, privileged: s.Privileged}
	for k, v := range s.Environment {
		if v != nil {
			a.env[k] = *v
		}
	}
	a.args = append(slices.Clone([]string(s.Entrypoint)), s.Command...)
	if s.User != "" {
		uid, err := strconv.Atoi(strings.Split(s.User, ":")[0])
		if err != nil {
			t.Errorf("%s: user %q is not numeric", a.where, s.User)
		}
		a.uid = uid
	}
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind {
			a.mounts[v.Target] = v.Source
		}
	}
	return a
}

// isAgentImage tells whether a container runs icmplb.
func isAgentImage(image string) bool {
	name, _, _ := strings.Cut(path.Base(image), ":")
	return name == "icmplb"
}

func k8sAgents(t *testing.T, docs []k8sDoc) []agentConfig {
	t.Helper()
	configMaps := map[string]map[string]string{}
	for _, d := range docs {
		if d.obj.Kind == "ConfigMap" {
			configMaps[d.obj.Name] = d.obj.Data
		}
	}
	var agents []agentConfig
	for _, d := range docs {
		ps := d.obj.podSpec()
		for _, c := range slices.Concat(ps.Containers, ps.InitContainers) {
			if !isAgentImage(c.Image) {
				continue
			}
			a := agentConfig{where: fmt.Sprintf("%s: %s %s container %s", d.file, d.obj.Kind, d.obj.Name, c.Name),
				env: map[string]string{}, uid: -1, mounts: map[string]string{}}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef == nil {
					t.Errorf("%s: envFrom other than a ConfigMap", a.where)
					continue
				}
				data, ok := configMaps[ef.ConfigMapRef.Name]
				if !ok {
					t.Errorf("%s: envFrom ConfigMap %q is not in the manifests", a.where, ef.ConfigMapRef.Name)
				}
				for k, v := range data {
					a.env[ef.Prefix+k] = v
				}
			}
			for _, e := range c.Env {
				v := e.Value
				if e.ValueFrom != nil {
					if e.ValueFrom.FieldRef == nil {
						t.Errorf("%s: %s: valueFrom other than a fieldRef", a.where, e.Name)
						continue
					}
					ex, ok := fieldRefExamples[e.ValueFrom.FieldRef.FieldPath]
					if !ok {
						t.Errorf("%s: %s: no example for fieldRef %s", a.where, e.Name, e.ValueFrom.FieldRef.FieldPath)
					}
					v = ex
				}
				v, err := expandK8s(v, a.env)
				if err != nil {
					t.Errorf("%s: %s: %v", a.where, e.Name, err)
				}
				a.env[e.Name] = v
			}
			a.args = slices.Concat(c.Command, c.Args)
			if sc := c.SecurityContext; sc != nil {
				if sc.RunAsUser != nil {
					a.uid = int(*sc.RunAsUser)
				}
				if sc.Capabilities != nil {
					a.capAdd, a.capDrop = capNames(sc.Capabilities.Add), capNames(sc.Capabilities.Drop)
				}
				a.privileged = sc.Privileged != nil && *sc.Privileged
			}
			for _, m := range c.VolumeMounts {
				for _, v := range ps.Volumes {
					if v.Name == m.Name && v.HostPath != nil {
						a.mounts[m.MountPath] = v.HostPath.Path
					}
				}
			}
			agents = append(agents, a)
		}
	}
	if len(agents) == 0 {
		t.Fatal("no container in the manifests runs the icmplb image")
	}
	return agents
}

func capNames(cs []corev1.Capability) []string {
	var out []string
	for _, c := range cs {
		out = append(out, string(c))
	}
	return out
}

var k8sRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandK8s expands $(VAR) as the kubelet does: only variables defined
// before (a reference to anything else stays as it is: an error here).
func expandK8s(v string, env map[string]string) (string, error) {
	var errs []error
	out := k8sRef.ReplaceAllStringFunc(v, func(m string) string {
		name := k8sRef.FindStringSubmatch(m)[1]
		if val, ok := env[name]; ok {
			return val
		}
		errs = append(errs, fmt.Errorf("$(%s) is not defined before", name))
		return m
	})
	return out, errors.Join(errs...)
}

func allAgents(t *testing.T) []agentConfig {
	t.Helper()
	return append([]agentConfig{composeAgent(t, loadCompose(t))}, k8sAgents(t, k8sDocs(t))...)
}

// listenPort is the agent's metrics port in a configuration.
func (a agentConfig) listenPort(t *testing.T) string {
	t.Helper()
	addr := config.DefaultListenAddress
	if v, ok := a.env["ICMPLB_WEB_LISTEN_ADDRESS"]; ok {
		addr = v
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: listen address %q: %v", a.where, addr, err)
	}
	return port
}

// ---- Tests: YAML and objects ---------------------------------------------------

func TestYAMLParses(t *testing.T) {
	files := yamlFiles(t)
	if len(files) < 10 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := decodeAll(data) // also refuses duplicate keys
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(docs) == 0 {
			t.Errorf("%s: no document", f)
		}
	}
}

func TestKubernetesObjects(t *testing.T) {
	docs := k8sDocs(t)
	kinds := map[string]int{}
	for _, d := range docs {
		o := d.obj
		where := fmt.Sprintf("%s line %d", d.file, d.node.Line)
		if o.APIVersion == "" || o.Kind == "" || o.Name == "" {
			t.Errorf("%s: apiVersion %q, kind %q, metadata.name %q: all three are needed", where, o.APIVersion, o.Kind, o.Name)
		}
		if o.Kind != "Namespace" && o.Namespace != namespace {
			t.Errorf("%s: %s %s in namespace %q, want %q", where, o.Kind, o.Name, o.Namespace, namespace)
		}
		kinds[o.Kind]++
		if o.Kind == "ConfigMap" {
			// The API takes only strings: 0 must be "0".
			for _, n := range mappingValue(d.node.Content[0], "data").Content {
				if n.Tag != "!!str" {
					t.Errorf("%s line %d: ConfigMap value %q is a %s, not a string: quote it", d.file, n.Line, n.Value, n.Tag)
				}
			}
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Deployment", "PodMonitor", "PrometheusRule"} {
		if kinds[k] == 0 {
			t.Errorf("no %s among the manifests", k)
		}
	}
	for _, d := range docs {
		if d.obj.Kind != "DaemonSet" {
			continue
		}
		ps := d.obj.podSpec()
		if !ps.HostNetwork || ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
			t.Errorf("%s: DaemonSet: hostNetwork %v, dnsPolicy %q; want true and ClusterFirstWithHostNet",
				d.file, ps.HostNetwork, ps.DNSPolicy)
		}
		found := false
		for _, v := range ps.Volumes {
			if v.HostPath != nil && v.HostPath.Path == "/sys/fs/bpf" {
				found = true
				if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
					t.Errorf("%s: bpffs hostPath type %v, want DirectoryOrCreate", d.file, v.HostPath.Type)
				}
			}
		}
		if !found {
			t.Errorf("%s: DaemonSet does not mount the host's /sys/fs/bpf", d.file)
		}
	}
}

// mappingValue is the value of key in a mapping node, or an empty node.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return &yaml.Node{}
}

// ---- Tests: variables and flags ------------------------------------------------

func TestAgentVariablesAndFlags(t *testing.T) {
	c := icmplbCLI(t)
	for _, a := range allAgents(t) {
		for _, name := range slices.Sorted(maps.Keys(a.env)) {
			switch {
			case strings.HasPrefix(name, "ICMPLB_"):
				if _, ok := c.envs[name]; !ok {
					t.Errorf("%s: %s is not a variable of `icmplb run` (it knows %v)", a.where, name, slices.Sorted(maps.Keys(c.envs)))
				}
			case strings.HasPrefix(name, "OTEL_"):
				if !otelVars[name] {
					t.Errorf("%s: %s is not a variable the OTel Go SDK reads", a.where, name)
				}
			case !helperVars[name]:
				t.Errorf("%s: %s is neither ICMPLB_*, OTEL_* nor one of %v: a typo?", a.where, name, slices.Sorted(maps.Keys(helperVars)))
			}
		}
		given := map[string]bool{}
		for k := range a.env {
			if f, ok := c.envs[k]; ok {
				given[f.name] = true
			}
		}
		if len(a.args) > 0 && a.args[0] != "run" {
			t.Errorf("%s: arguments %q do not start with the command run", a.where, a.args)
		}
		for _, arg := range a.args {
			if !strings.HasPrefix(arg, "--") {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
			if _, ok := c.flags[name]; !ok {
				t.Errorf("%s: %s is not a flag of `icmplb run`", a.where, arg)
			}
			given[name] = true
		}
		for _, r := range c.required {
			if !given[r] {
				t.Errorf("%s: the required --%s (%s) is not set", a.where, r, c.flags[r].env)
			}
		}
	}
}

// TestAgentConfigurationValid runs the agent's own configuration check on the
// values every deployment passes, and checks the others as kong would.
func TestAgentConfigurationValid(t *testing.T) {
	for _, a := range allAgents(t) {
		// The agent's own parser and check, on the variables and flags
		// the deployment passes.
		var errs []error
		env := map[string]string{}
		for name, v := range a.env {
			if strings.HasPrefix(name, "ICMPLB_") {
				env[name] = v
			}
		}
		args := a.args
		if len(args) > 0 && args[0] == "run" {
			args = args[1:]
		}
		if _, _, err := config.Parse(args, env); err != nil {
			errs = append(errs, err)
		}
		for _, name := range []string{"ICMPLB_BPFFS", "ICMPLB_WEB_CONFIG_FILE"} {
			if v := a.env[name]; v != "" && !filepath.IsAbs(v) {
				errs = append(errs, fmt.Errorf("%s=%q: not an absolute path", name, v))
			}
		}
		if fs := a.env["ICMPLB_BPFFS"]; fs != "" {
			if src, ok := a.mounts[fs]; !ok || src != "/sys/fs/bpf" {
				errs = append(errs, fmt.Errorf("ICMPLB_BPFFS=%s is not the host's /sys/fs/bpf mounted there (mounts %v)", fs, a.mounts))
			}
			// The host's bpffs is root's, mode 0700: only uid 0 can pin there
			// without CAP_DAC_OVERRIDE (checked: "create pin directory:
			// permission denied" as uid 65532).
			if a.uid != 0 {
				errs = append(errs, fmt.Errorf("ICMPLB_BPFFS is set but the agent does not run as uid 0, which pinning under the host's bpffs needs"))
			}
		}
		if p := a.env["OTEL_EXPORTER_OTLP_PROTOCOL"]; p != "" && p != "grpc" && p != "http/protobuf" {
			errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: exporter/otel.go takes grpc or http/protobuf", p))
		}
		if e := a.env["OTEL_EXPORTER_OTLP_ENDPOINT"]; e != "" {
			if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" {
				errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT=%q: want http(s)://host:port", e))
			}
		}
		if err := errors.Join(errs...); err != nil {
			t.Errorf("%s: %v", a.where, err)
		}
	}
}

// ---- Tests: capabilities, probes, ports ----------------------------------------

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

func TestCapabilities(t *testing.T) {
	for _, a := range allAgents(t) {
		if !sameSet(a.capAdd, requiredCaps) {
			t.Errorf("%s: capabilities added %v, want exactly %v", a.where, a.capAdd, requiredCaps)
		}
		if !slices.Equal(a.capDrop, []string{"ALL"}) {
			t.Errorf("%s: capabilities dropped %v, want [ALL]", a.where, a.capDrop)
		}
		if a.privileged {
			t.Errorf("%s: privileged; the three capabilities are enough", a.where)
		}
	}
	df := parseDockerfile(t)
	var caps []string
	for _, w := range df.setcapWords(t) {
		spec, _, _ := strings.Cut(w, "+")
		for c := range strings.SplitSeq(spec, ",") {
			caps = append(caps, strings.ToUpper(strings.TrimPrefix(c, "cap_")))
		}
	}
	if !sameSet(caps, requiredCaps) {
		t.Errorf("%s: setcap gives %v, want %v", dockerfile, caps, requiredCaps)
	}
	doc, err := os.ReadFile(containersDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range requiredCaps {
		if !strings.Contains(df.text, "CAP_"+c) {
			t.Errorf("%s: the comment does not explain CAP_%s", dockerfile, c)
		}
		if !strings.Contains(string(doc), "CAP_"+c) {
			t.Errorf("%s does not explain CAP_%s", containersDoc, c)
		}
	}
}

func TestProbesAndPorts(t *testing.T) {
	docs := k8sDocs(t)
	n := 0
	for _, d := range docs {
		ps := d.obj.podSpec()
		for _, c := range slices.Concat(ps.Containers, ps.InitContainers) {
			if !isAgentImage(c.Image) {
				continue
			}
			n++
			where := fmt.Sprintf("%s: %s %s container %s", d.file, d.obj.Kind, d.obj.Name, c.Name)
			want := config.DefaultListenAddress[strings.LastIndex(config.DefaultListenAddress, ":")+1:]
			ports := map[string]int{}
			for _, p := range c.Ports {
				ports[p.Name] = int(p.ContainerPort)
			}
			if strconv.Itoa(ports["metrics"]) != want {
				t.Errorf("%s: port metrics is %d, want %s", where, ports["metrics"], want)
			}
			for _, pr := range []struct {
				name string
				p    *corev1.Probe
				path string
			}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
				if pr.p == nil || pr.p.HTTPGet == nil {
					t.Errorf("%s: no %s with httpGet", where, pr.name)
					continue
				}
				if pr.p.HTTPGet.Path != pr.path {
					t.Errorf("%s: %s path %q, want %q", where, pr.name, pr.p.HTTPGet.Path, pr.path)
				}
				port := pr.p.HTTPGet.Port.String()
				if named, ok := ports[port]; ok {
					port = strconv.Itoa(named)
				}
				if port != want {
					t.Errorf("%s: %s on port %v, want the metrics port %s", where, pr.name, pr.p.HTTPGet.Port, want)
				}
			}
		}
	}
	if n < 2 {
		t.Errorf("found %d icmplb containers, want the DaemonSet's and the sidecar's", n)
	}
}

// ---- Tests: Dockerfile against the Makefile ------------------------------------

type instruction struct {
	cmd  string // upper case
	args string
	line int
}

type stage struct {
	name, image string
	instr       []instruction
}

type dockerfileT struct {
	text   string
	stages []stage
	args   map[string]string // global ARGs with defaults
}

// parseDockerfile reads the Dockerfile with BuildKit's own parser.
func parseDockerfile(t *testing.T) dockerfileT {
	t.Helper()
	data, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", dockerfile, err)
	}
	df := dockerfileT{text: string(data), args: map[string]string{}}
	for _, n := range res.AST.Children {
		cmd := strings.ToUpper(n.Value)
		var words []string
		for a := n.Next; a != nil; a = a.Next {
			words = append(words, a.Value)
		}
		if cmd == "FROM" {
			st := stage{image: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "AS") {
				st.name = words[2]
			}
			df.stages = append(df.stages, st)
			continue
		}
		// The instruction's text as written, without its keyword and its
		// flags (RUN --mount), which the parser keeps apart.
		args := strings.TrimSpace(n.Original[len(n.Value):])
		for _, f := range n.Flags {
			args = strings.TrimSpace(strings.Replace(args, f, "", 1))
		}
		if cmd == "COPY" {
			args = strings.Join(append(slices.Clone(n.Flags), words...), " ")
		}
		if len(df.stages) == 0 {
			if cmd == "ARG" {
				k, v, _ := strings.Cut(words[0], "=")
				df.args[k] = v
			}
			continue
		}
		st := &df.stages[len(df.stages)-1]
		st.instr = append(st.instr, instruction{cmd: cmd, args: args, line: n.StartLine})
	}
	if len(df.stages) < 2 {
		t.Fatalf("%s: %d stages, want a build stage and a final one", dockerfile, len(df.stages))
	}
	return df
}

// goBuild is a parsed `go build` command line.
type goBuild struct {
	env   map[string]string
	flags map[string]string // -trimpath: "true"
	out   string
	pkgs  []string
}

// goBuildValued are the go build flags that take a value.
var goBuildValued = set("-o", "-ldflags", "-gcflags", "-asmflags", "-tags", "-mod", "-p",
	"-pkgdir", "-buildmode", "-compiler", "-gccgoflags", "-modfile", "-overlay", "-pgo", "-installsuffix")

var envAssign = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`)

func parseGoBuild(words []string) (goBuild, error) {
	b := goBuild{env: map[string]string{}, flags: map[string]string{}}
	i := 0
	for ; i < len(words) && envAssign.MatchString(words[i]); i++ {
		k, v, _ := strings.Cut(words[i], "=")
		b.env[k] = v
	}
	if len(words) < i+2 || words[i+1] != "build" || (words[i] != "go" && words[i] != "${GO}") {
		return b, fmt.Errorf("not a go build command: %q", words)
	}
	for i += 2; i < len(words); i++ {
		w := words[i]
		if !strings.HasPrefix(w, "-") {
			b.pkgs = append(b.pkgs, w)
			continue
		}
		name, val, hasVal := strings.Cut(w, "=")
		name = "-" + strings.TrimLeft(name, "-")
		if !hasVal {
			val = "true"
			if goBuildValued[name] && i+1 < len(words) {
				i++
				val = words[i]
			}
		}
		if name == "-o" {
			b.out = val
			continue
		}
		b.flags[name] = val
	}
	return b, nil
}

// shellCommands parses a shell script with mvdan.cc/sh and returns the
// words of each simple command, its NAME=value assignments first. Quotes and
// escapes are resolved as the shell would; a parameter ($V, ${V}) is kept as
// "${V}", and one inside single quotes, which the shell would not expand, is
// an error.
func shellCommands(script string) ([][]string, error) {
	f, err := syntax.NewParser().Parse(strings.NewReader(script), "")
	if err != nil {
		return nil, err
	}
	cfg := &expand.Config{Env: expand.FuncEnviron(func(name string) string { return "${" + name + "}" })}
	var cmds [][]string
	syntax.Walk(f, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.SglQuoted:
			if strings.Contains(n.Value, "$") && err == nil {
				err = fmt.Errorf("variable inside single quotes is not expanded: '%s'", n.Value)
			}
		case *syntax.CallExpr:
			var words []string
			for _, a := range n.Assigns {
				v, e := expand.Literal(cfg, a.Value)
				err = errors.Join(err, e)
				words = append(words, a.Name.Value+"="+v)
			}
			for _, w := range n.Args {
				v, e := expand.Literal(cfg, w)
				err = errors.Join(err, e)
				words = append(words, v)
			}
			cmds = append(cmds, words)
		}
		return true
	})
	return cmds, err
}

// dockerBuild finds the go build of the Dockerfile's build stage.
func (df dockerfileT) dockerBuild(t *testing.T) (goBuild, *stage, int) {
	t.Helper()
	for si := range df.stages {
		for ii, in := range df.stages[si].instr {
			if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
				continue
			}
			cmds, err := shellCommands(in.args)
			if err != nil {
				t.Fatalf("%s line %d: %v", dockerfile, in.line, err)
			}
			for _, c := range cmds {
				if b, err := parseGoBuild(c); err == nil {
					return b, &df.stages[si], ii
				}
			}
		}
	}
	t.Fatalf("%s: no RUN with go build", dockerfile)
	return goBuild{}, nil, 0
}

// setcapWords are the capability arguments of the Dockerfile's setcap.
func (df dockerfileT) setcapWords(t *testing.T) []string {
	t.Helper()
	for _, st := range df.stages {
		for _, in := range st.instr {
			if in.cmd != "RUN" {
				continue
			}
			cmds, err := shellCommands(in.args)
			if err != nil {
				t.Fatalf("%s line %d: %v", dockerfile, in.line, err)
			}
			for _, c := range cmds {
				if len(c) >= 3 && c[0] == "setcap" {
					return c[1 : len(c)-1]
				}
			}
		}
	}
	t.Fatalf("%s: no setcap", dockerfile)
	return nil
}

// makefileBuild is the Makefile's `build` recipe with the Makefile's
// variables expanded; $(VERSION) becomes ${VERSION}, as in the Dockerfile.
func makefileBuild(t *testing.T) goBuild {
	t.Helper()
	data, err := os.ReadFile(makefile)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	assign := regexp.MustCompile(`^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$`)
	var recipe []string
	inBuild := false
	for line := range strings.SplitSeq(string(data), "\n") {
		if m := assign.FindStringSubmatch(line); m != nil && !strings.HasPrefix(line, "\t") {
			vars[m[1]] = strings.TrimSpace(m[2])
		}
		switch {
		case strings.HasPrefix(line, "build:"):
			inBuild = true
		case inBuild && strings.HasPrefix(line, "\t"):
			recipe = append(recipe, strings.TrimSpace(line))
		default:
			inBuild = false
		}
	}
	if len(recipe) != 1 {
		t.Fatalf("%s: build recipe %q, want one command", makefile, recipe)
	}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	cmd := recipe[0]
	for range 10 {
		cmd = ref.ReplaceAllStringFunc(cmd, func(m string) string {
			name := ref.FindStringSubmatch(m)[1]
			if name == "VERSION" {
				return "@ICMPLB_VERSION@"
			}
			return vars[name]
		})
	}
	cmds, err := shellCommands(cmd)
	if err != nil || len(cmds) != 1 {
		t.Fatalf("%s: build recipe %q: %v", makefile, cmd, err)
	}
	words := cmds[0]
	for i := range words {
		words[i] = strings.ReplaceAll(words[i], "@ICMPLB_VERSION@", "${VERSION}")
	}
	b, err := parseGoBuild(words)
	if err != nil {
		t.Fatalf("%s: %v", makefile, err)
	}
	return b
}

func TestDockerfileBuildsLikeMakefile(t *testing.T) {
	mk := makefileBuild(t)
	df := parseDockerfile(t)
	db, st, at := df.dockerBuild(t)
	if st.name == "" {
		t.Errorf("%s: the build stage has no name (FROM ... AS build)", dockerfile)
	}
	for k, v := range mk.env {
		if db.env[k] != v {
			t.Errorf("%s: go build with %s=%q, Makefile with %q", dockerfile, k, db.env[k], v)
		}
	}
	for k := range db.env {
		if _, ok := mk.env[k]; !ok && k != "GOOS" && k != "GOARCH" {
			t.Errorf("%s: go build with %s, which the Makefile does not set", dockerfile, k)
		}
	}
	if !reflect.DeepEqual(db.flags, mk.flags) {
		t.Errorf("go build flags differ:\n  %s: %v\n  Makefile:   %v", dockerfile, db.flags, mk.flags)
	}
	if !slices.Equal(db.pkgs, mk.pkgs) {
		t.Errorf("go build packages: %s %v, Makefile %v", dockerfile, db.pkgs, mk.pkgs)
	}
	if mk.env["CGO_ENABLED"] != "0" || mk.flags["-trimpath"] != "true" || !strings.Contains(mk.flags["-ldflags"], "main.version=${VERSION}") {
		t.Errorf("Makefile build %+v: the parse lost CGO_ENABLED=0, -trimpath or -X main.version", mk)
	}
	// ${VERSION} must be an ARG of the stage, declared before the RUN.
	if strings.Contains(db.flags["-ldflags"], "${VERSION}") &&
		!slices.ContainsFunc(st.instr[:at], func(in instruction) bool {
			return in.cmd == "ARG" && strings.HasPrefix(in.args+"=", "VERSION=")
		}) {
		t.Errorf("%s: -ldflags uses ${VERSION} but the build stage declares no ARG VERSION before it", dockerfile)
	}

	// The final stage takes the built binary.
	final := df.stages[len(df.stages)-1]
	var copied bool
	for _, in := range final.instr {
		f := strings.Fields(in.args)
		if in.cmd == "COPY" && len(f) == 3 && f[0] == "--from="+st.name && f[1] == db.out && f[2] == "/icmplb" {
			copied = true
		}
	}
	if !copied {
		t.Errorf("%s: the final stage does not COPY --from=%s %s /icmplb", dockerfile, st.name, db.out)
	}
}

func TestDockerfileSources(t *testing.T) {
	df := parseDockerfile(t)
	_, st, at := df.dockerBuild(t)
	copied := map[string]bool{}
	for _, in := range st.instr[:at] {
		if in.cmd != "COPY" {
			continue
		}
		f := strings.Fields(in.args)
		if len(f) < 2 || strings.HasPrefix(f[0], "--") {
			continue
		}
		dst := f[len(f)-1]
		for _, src := range f[:len(f)-1] {
			if strings.TrimSuffix(src, "/") != strings.TrimSuffix(dst, "/") && dst != "./" {
				t.Errorf("%s line %d: COPY %s %s does not keep the repository layout", dockerfile, in.line, src, dst)
			}
			copied[strings.TrimSuffix(src, "/")] = true
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if !copied[f] {
			t.Errorf("%s: the build stage does not copy %s", dockerfile, f)
		}
	}
	// Every package of the module the binary is built from.
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/icmplb")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for dir := range strings.FieldsSeq(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			t.Fatal(err)
		}
		rel = filepath.ToSlash(rel)
		ok := false
		for c := range copied {
			if rel == c || strings.HasPrefix(rel, c+"/") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: package directory %s of the binary is not copied into the build stage", dockerfile, rel)
		}
	}

	// A Go at least as new as go.mod asks: the golang images set
	// GOTOOLCHAIN=local and would not fetch a newer one.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.ParseLax("go.mod", gomod, nil)
	if err != nil || mf.Go == nil {
		t.Fatalf("go.mod: no go directive (%v)", err)
	}
	want := "go" + mf.Go.Version
	image := st.image
	for k, v := range df.args {
		image = strings.ReplaceAll(image, "${"+k+"}", v)
	}
	tag := regexp.MustCompile(`^golang:(\d+(?:\.\d+)*)`).FindStringSubmatch(image)
	if tag == nil {
		t.Fatalf("%s: build stage image %q is not golang:VERSION-...", dockerfile, image)
	}
	// A tag without a patch version (golang:1.26) is the newest of its
	// release: compare it with go.mod's language version.
	have := "go" + tag[1]
	if strings.Count(tag[1], ".") < 2 {
		want = version.Lang(want)
	}
	if version.Compare(have, want) < 0 {
		t.Errorf("%s: build stage %s is older than go.mod's go %s", dockerfile, image, mf.Go.Version)
	}
}

func TestDockerfileFinalStage(t *testing.T) {
	df := parseDockerfile(t)
	final := df.stages[len(df.stages)-1]
	if final.image != "scratch" && !strings.HasPrefix(final.image, "gcr.io/distroless/static") {
		t.Errorf("%s: final stage %q, want gcr.io/distroless/static... or scratch", dockerfile, final.image)
	}
	last := map[string]string{}
	for _, in := range final.instr {
		last[in.cmd] = in.args
	}
	user := strings.Split(last["USER"], ":")[0]
	if uid, err := strconv.Atoi(user); err != nil || uid == 0 {
		t.Errorf("%s: USER %q, want a numeric non-root uid (Kubernetes verifies runAsNonRoot only on numbers)", dockerfile, last["USER"])
	}
	port := config.DefaultListenAddress[strings.LastIndex(config.DefaultListenAddress, ":")+1:]
	if last["EXPOSE"] != port && last["EXPOSE"] != port+"/tcp" {
		t.Errorf("%s: EXPOSE %q, want %s (config.DefaultListenAddress)", dockerfile, last["EXPOSE"], port)
	}
	for cmd, want := range map[string][]string{"ENTRYPOINT": {"/icmplb"}, "CMD": {"run"}} {
		var got []string
		if err := json.Unmarshal([]byte(last[cmd]), &got); err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: %s %s, want %q in exec form", dockerfile, cmd, last[cmd], want)
		}
	}
}

// ---- Tests: PrometheusRule -----------------------------------------------------

const ruleHeader = `# GENERATED from dashboards/icmplb-rules.yml: do not edit. After changing the
# rules, regenerate with
#   go test ./deploy -run TestPrometheusRule -update
# (TestPrometheusRule fails while the two differ.)
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: icmplb
  namespace: icmplb
  labels:
    app.kubernetes.io/name: icmplb
    app.kubernetes.io/part-of: icmplb
spec:
`

// generateRule wraps the rules file's groups, comments and all, into the
// PrometheusRule's spec.
func generateRule(rules []byte) ([]byte, error) {
	lines := strings.Split(string(rules), "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "groups:") })
	if start < 0 {
		return nil, fmt.Errorf("%s: no top-level groups:", rulesFile)
	}
	var b strings.Builder
	b.WriteString(ruleHeader)
	for _, l := range lines[start:] {
		if strings.TrimSpace(l) != "" {
			b.WriteString("  " + l)
		}
		b.WriteString("\n")
	}
	return []byte(strings.TrimRight(b.String(), "\n") + "\n"), nil
}

func TestPrometheusRule(t *testing.T) {
	rules, err := os.ReadFile(rulesFile)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s does not exist yet: nothing to compare the PrometheusRule with", rulesFile)
	}
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		gen, err := generateRule(rules)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ruleManifest, gen, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var src map[string]any
	if err := yaml.Unmarshal(rules, &src); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(src) != 1 || src["groups"] == nil {
		t.Fatalf("%s: top-level keys %v, want only groups", rulesFile, slices.Collect(maps.Keys(src)))
	}
	var pr struct {
		Kind string `yaml:"kind"`
		Spec struct {
			Groups any `yaml:"groups"`
		} `yaml:"spec"`
	}
	readYAML(t, ruleManifest, &pr)
	if pr.Kind != "PrometheusRule" {
		t.Fatalf("%s: kind %q", ruleManifest, pr.Kind)
	}
	if !reflect.DeepEqual(pr.Spec.Groups, src["groups"]) {
		t.Errorf("%s: spec.groups differ from the groups of %s; run\n  go test ./deploy -run TestPrometheusRule -update",
			ruleManifest, rulesFile)
	}
}

// ---- Tests: PodMonitor ---------------------------------------------------------

func TestPodMonitor(t *testing.T) {
	docs := k8sDocs(t)
	var pm *k8sDoc
	for i := range docs {
		if docs[i].obj.Kind == "PodMonitor" {
			pm = &docs[i]
		}
	}
	if pm == nil {
		t.Fatal("no PodMonitor")
	}
	// The Prometheus Operator names the job namespace/name unless jobLabel
	// says otherwise; the rules want "icmplb" in it.
	spec := pm.obj.PodMonitor
	job := pm.obj.Namespace + "/" + pm.obj.Name
	if spec.JobLabel != "" || !strings.Contains(job, "icmplb") {
		t.Errorf("%s: job %q (jobLabel %q): the rules' IcmplbExporterDown wants a job containing icmplb",
			pm.file, job, spec.JobLabel)
	}
	sel := spec.Selector.MatchLabels
	if len(sel) == 0 {
		t.Fatalf("%s: no selector.matchLabels", pm.file)
	}
	for _, d := range docs {
		ps := d.obj.podSpec()
		for _, c := range slices.Concat(ps.Containers, ps.InitContainers) {
			if !isAgentImage(c.Image) {
				continue
			}
			labels := d.obj.Template.Labels
			for k, v := range sel {
				if labels[k] != v {
					t.Errorf("%s: pods of %s %s lack the label %s=%s the PodMonitor selects", d.file, d.obj.Kind, d.obj.Name, k, v)
				}
			}
			if !spec.NamespaceSelector.Any && d.obj.Namespace != pm.obj.Namespace &&
				!slices.Contains(spec.NamespaceSelector.MatchNames, d.obj.Namespace) {
				t.Errorf("%s: the PodMonitor does not look in namespace %s", d.file, d.obj.Namespace)
			}
			for _, ep := range spec.PodMetricsEndpoints {
				if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == ep.Port }) {
					t.Errorf("%s: container %s has no port %q for the PodMonitor", d.file, c.Name, ep.Port)
				}
				if ep.Path != "" && ep.Path != "/metrics" {
					t.Errorf("%s: PodMonitor path %q", pm.file, ep.Path)
				}
			}
		}
	}
}

// ---- Tests: kustomize ----------------------------------------------------------

func TestKustomizations(t *testing.T) {
	for _, dir := range []string{k8sDir, monitoringDir} {
		data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k kusttypes.Kustomization
		if err := k8syaml.UnmarshalStrict(data, &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, f := range files {
			if b := filepath.Base(f); b != "kustomization.yaml" {
				want = append(want, b)
			}
		}
		if !sameSet(k.Resources, want) {
			t.Errorf("%s/kustomization.yaml: resources %v, the directory has %v", dir, k.Resources, want)
		}
		if k.Namespace != namespace {
			t.Errorf("%s/kustomization.yaml: namespace %q", dir, k.Namespace)
		}
		for _, img := range k.Images {
			if !isAgentImage(img.Name) {
				t.Errorf("%s/kustomization.yaml: image %q is not the one the manifests use", dir, img.Name)
			}
		}
		// Built as `kubectl apply -k` builds it, with kustomize's own API.
		resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Errorf("kustomize build %s: %v", dir, err)
			continue
		}
		out, err := resMap.AsYaml()
		if err != nil {
			t.Fatal(err)
		}
		docs, err := decodeAll(out)
		if err != nil || len(docs) != len(k.Resources) {
			t.Errorf("kustomize build %s: %d objects (%v), want %d", dir, len(docs), err, len(k.Resources))
		}
		for _, n := range docs {
			obj, err := decodeK8s(n)
			if err != nil {
				t.Errorf("kustomize build %s: %v", dir, err)
				continue
			}
			if obj.Kind != "Namespace" && obj.Namespace != namespace {
				t.Errorf("kustomize build %s: %s %s in namespace %q", dir, obj.Kind, obj.Name, obj.Namespace)
			}
		}
	}
}

// ---- Tests: compose wiring -----------------------------------------------------

type promConfigT struct {
	Global struct {
		ScrapeInterval string `yaml:"scrape_interval"`
	} `yaml:"global"`
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

func TestComposePrometheus(t *testing.T) {
	c := loadCompose(t)
	icmplb, prom := c.Services["icmplb"], c.Services["prometheus"]
	if icmplb.NetworkMode != "host" {
		t.Errorf("icmplb: network_mode %q, want host", icmplb.NetworkMode)
	}
	if b := icmplb.Build; b == nil || !sameFile(t, filepath.Join(b.Context, b.Dockerfile), dockerfile) || b.Args["VERSION"] == nil || *b.Args["VERSION"] == "" {
		t.Errorf("icmplb: build %+v, want context .., dockerfile deploy/Dockerfile and the VERSION arg", b)
	}

	// The config Prometheus runs is this file.
	var configPath string
	for _, a := range prom.Command {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configPath = v
		}
	}
	if configPath == "" {
		t.Fatal("prometheus: no --config.file in command")
	}
	if host, ok := prom.hostPath(configPath); !ok || !sameFile(t, host, promConfig) {
		t.Fatalf("prometheus: --config.file %s is not mounted from %s", configPath, promConfig)
	}
	var pc promConfigT
	readYAML(t, promConfig, &pc)

	// Its rule files are the dashboards' rules, here and in the container.
	if len(pc.RuleFiles) == 0 {
		t.Errorf("%s: no rule_files", promConfig)
	}
	for _, r := range pc.RuleFiles {
		if filepath.IsAbs(r) {
			t.Errorf("%s: rule file %s is absolute: promtool cannot check it here", promConfig, r)
			continue
		}
		if here := filepath.Join(filepath.Dir(promConfig), r); !sameFile(t, here, rulesFile) {
			t.Errorf("%s: rule file %s resolves to %s here, not to %s", promConfig, r, here, rulesFile)
		}
		inContainer := path.Join(path.Dir(configPath), r)
		if host, ok := prom.hostPath(inContainer); !ok || !sameFile(t, host, rulesFile) {
			t.Errorf("prometheus: rule file %s (%s in the container) is not mounted from %s", r, inContainer, rulesFile)
		}
	}

	// It scrapes the agent on the host network through host-gateway.
	port := composeAgent(t, c).listenPort(t)
	var scraped bool
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			if slices.Contains(st.Targets, "host.docker.internal:"+port) {
				scraped = true
				if !strings.Contains(sc.JobName, "icmplb") {
					t.Errorf("%s: job %q scrapes icmplb; the rules want a job name containing icmplb", promConfig, sc.JobName)
				}
			}
		}
	}
	if !scraped {
		t.Errorf("%s: no job scrapes host.docker.internal:%s", promConfig, port)
	}
	if !slices.Contains(prom.ExtraHosts["host.docker.internal"], "host-gateway") {
		t.Errorf("prometheus: extra_hosts %v lacks host.docker.internal:host-gateway", prom.ExtraHosts)
	}
	if !slices.Contains(prom.Command, "--enable-feature=exemplar-storage") {
		t.Errorf("prometheus: exemplar storage is off; the latency panels' exemplars need it")
	}
}

func TestPromtoolCheckConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus)")
	}
	if _, err := os.Stat(rulesFile); err != nil {
		t.Skipf("%s: %v", rulesFile, err)
	}
	// rule_files is relative to the config, as in the container: no rewrite.
	out, err := exec.Command(promtool, "check", "config", promConfig).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check config %s: %v\n%s", promConfig, err, out)
	}
}

func TestComposeGrafana(t *testing.T) {
	c := loadCompose(t)
	g := c.Services["grafana"]
	var promCfg promConfigT
	readYAML(t, promConfig, &promCfg)
	var tempo struct {
		Server struct {
			HTTPListenPort int `yaml:"http_listen_port"`
		} `yaml:"server"`
	}
	readYAML(t, tempoConfig, &tempo)

	dsDir, ok := g.hostPath("/etc/grafana/provisioning/datasources")
	if !ok {
		t.Fatal("grafana: no data source provisioning mounted")
	}
	dsFiles, _ := filepath.Glob(filepath.Join(dsDir, "*.y*ml"))
	if len(dsFiles) == 0 {
		t.Fatalf("grafana: no data source file in %s", dsDir)
	}
	type datasource struct {
		Name      string `yaml:"name"`
		UID       string `yaml:"uid"`
		Type      string `yaml:"type"`
		URL       string `yaml:"url"`
		IsDefault bool   `yaml:"isDefault"`
		JSONData  struct {
			TimeInterval       string `yaml:"timeInterval"`
			ExemplarTraceIDDst []struct {
				Name          string `yaml:"name"`
				DatasourceUID string `yaml:"datasourceUid"`
			} `yaml:"exemplarTraceIdDestinations"`
		} `yaml:"jsonData"`
	}
	byUID := map[string]datasource{}
	for _, f := range dsFiles {
		var p struct {
			Datasources []datasource `yaml:"datasources"`
		}
		readYAML(t, f, &p)
		for _, d := range p.Datasources {
			byUID[d.UID] = d
		}
	}
	prom, ok := byUID["prometheus"]
	if !ok || prom.Type != "prometheus" || !prom.IsDefault {
		t.Errorf("grafana: want the default data source to be Prometheus with uid prometheus, got %+v", prom)
	}
	if prom.JSONData.TimeInterval != promCfg.Global.ScrapeInterval {
		t.Errorf("grafana: Prometheus timeInterval %q, scrape_interval %q: $__rate_interval needs them equal",
			prom.JSONData.TimeInterval, promCfg.Global.ScrapeInterval)
	}
	var traces string
	for _, d := range byUID {
		if d.Type == "tempo" || d.Type == "jaeger" {
			traces = d.UID
		}
	}
	if traces == "" {
		t.Error("grafana: no trace data source")
	}
	if len(prom.JSONData.ExemplarTraceIDDst) == 0 {
		t.Error("grafana: Prometheus has no exemplar link to the traces")
	}
	for _, e := range prom.JSONData.ExemplarTraceIDDst {
		if e.Name != "trace_id" || e.DatasourceUID != traces {
			t.Errorf("grafana: exemplar link %+v, want trace_id to %s (exporter/exemplars.go labels exemplars trace_id)", e, traces)
		}
	}
	// URLs name compose services, on the ports they listen on.
	listen := map[string]string{"prometheus": "9090", "tempo": strconv.Itoa(tempo.Server.HTTPListenPort)}
	for _, d := range byUID {
		u, err := url.Parse(d.URL)
		if err != nil {
			t.Errorf("grafana: %s: %v", d.Name, err)
			continue
		}
		if _, ok := c.Services[u.Hostname()]; !ok {
			t.Errorf("grafana: %s at %s: no compose service %q", d.Name, d.URL, u.Hostname())
		}
		if want := listen[u.Hostname()]; u.Port() != want {
			t.Errorf("grafana: %s at %s, but %s listens on %s", d.Name, d.URL, u.Hostname(), want)
		}
	}

	// Dashboards: the provider's path holds the dashboards' JSON.
	dbDir, ok := g.hostPath("/etc/grafana/provisioning/dashboards")
	if !ok {
		t.Fatal("grafana: no dashboard provisioning mounted")
	}
	dbFiles, _ := filepath.Glob(filepath.Join(dbDir, "*.y*ml"))
	if len(dbFiles) == 0 {
		t.Fatalf("grafana: no dashboard provider in %s", dbDir)
	}
	for _, f := range dbFiles {
		var p struct {
			Providers []struct {
				Type    string `yaml:"type"`
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		readYAML(t, f, &p)
		for _, pr := range p.Providers {
			host, ok := g.hostPath(pr.Options.Path)
			if !ok || !sameFile(t, host, dashboardsDir) {
				t.Errorf("%s: provider path %s is not mounted from %s", f, pr.Options.Path, dashboardsDir)
				continue
			}
			for _, db := range []string{"icmplb-overview.json", "icmplb-backend.json"} {
				if _, err := os.Stat(filepath.Join(host, db)); err != nil {
					t.Errorf("%s: provider path %s: %v", f, pr.Options.Path, err)
				}
			}
		}
	}
}

// TestComposeTraces follows the spans: icmplb (host network) sends OTLP to a
// port on the host that the trace backend publishes, onto its receiver.
func TestComposeTraces(t *testing.T) {
	c := loadCompose(t)
	a := composeAgent(t, c)
	if n, err := strconv.Atoi(a.env["ICMPLB_TRACE_SAMPLE"]); err != nil || n <= 0 {
		t.Errorf("%s: ICMPLB_TRACE_SAMPLE=%q: tracing is off, so the trace backend gets nothing", a.where, a.env["ICMPLB_TRACE_SAMPLE"])
	}
	u, err := url.Parse(a.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	if err != nil || (u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost") {
		t.Fatalf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %q: want http://127.0.0.1:PORT, a port the trace backend publishes", a.where, u)
	}
	proto := a.env["OTEL_EXPORTER_OTLP_PROTOCOL"]
	if proto == "" {
		proto = "http/protobuf"
	}
	var tc struct {
		Distributor struct {
			Receivers struct {
				OTLP struct {
					Protocols map[string]struct {
						Endpoint string `yaml:"endpoint"`
					} `yaml:"protocols"`
				} `yaml:"otlp"`
			} `yaml:"receivers"`
		} `yaml:"distributor"`
	}
	readYAML(t, tempoConfig, &tc)
	recv := tc.Distributor.Receivers.OTLP.Protocols[map[string]string{"http/protobuf": "http", "grpc": "grpc"}[proto]]
	host, rport, err := net.SplitHostPort(recv.Endpoint)
	if err != nil || host != "0.0.0.0" {
		t.Fatalf("%s: the OTLP %s receiver listens on %q; published ports need 0.0.0.0:PORT", tempoConfig, proto, recv.Endpoint)
	}
	tempo, ok := c.Services["tempo"]
	if !ok {
		t.Fatal("compose: no tempo service")
	}
	if cport := tempo.published()[u.Port()]; cport != rport {
		t.Errorf("compose: icmplb sends to host port %s, which tempo publishes to %q, not to its receiver's %s", u.Port(), cport, rport)
	}
	if hostPath, ok := tempo.hostPath("/etc/tempo/tempo.yaml"); !ok || !sameFile(t, hostPath, tempoConfig) {
		t.Errorf("compose: tempo does not mount %s", tempoConfig)
	}
}

// ---- Tests: the containers page -------------------------------------------------

func TestContainersDoc(t *testing.T) {
	data, err := os.ReadFile(containersDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, want := range []string{containersDocHeading, dockerBuildCmd, "docker compose -f deploy/compose.yaml up",
		"/sys/fs/bpf", "kubectl apply -k deploy/kubernetes", "PodMonitor", "PrometheusRule", "ICMPLB_"} {
		if !strings.Contains(doc, want) {
			t.Errorf("%s does not mention %q", containersDoc, want)
		}
	}
	if !strings.Contains(parseDockerfile(t).text, dockerBuildCmd) {
		t.Errorf("%s does not show %q", dockerfile, dockerBuildCmd)
	}
}
