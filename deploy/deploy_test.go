// SPDX-License-Identifier: MIT

package deploy

// Each file is read with its ecosystem's own parser: Kubernetes objects
// strictly into the k8s.io/api and Prometheus Operator types, kustomizations
// built by kustomize, the compose file loaded by compose-go, the Dockerfile by
// BuildKit, shell lines by mvdan.cc/sh, the Makefile by make. Flags and
// variables come from the config package, which parses them as the binary does.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
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
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	kyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/syntax"
	"sigs.k8s.io/kustomize/api/filters/refvar"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/icmplb/icmplb/config"
)

var update = flag.Bool("update", false, "rewrite "+ruleManifest+" from "+rulesFile)

// Paths are relative to this package's directory, the tests' working directory.
const (
	dockerfile, makefile, composeFile = "Dockerfile", "../Makefile", "compose.yaml"
	promConfig, tempoConfig           = "prometheus/prometheus.yml", "tempo/tempo.yaml"
	k8sDir, monitoringDir             = "kubernetes", "kubernetes/monitoring"
	ruleManifest, rulesFile           = "kubernetes/monitoring/prometheusrule.yaml", "../dashboards/icmplb-rules.yml"
	dashboardsDir, containersDoc      = "../dashboards", "../docs/containers-and-kubernetes.md"
	namespace, dockerBuildCmd         = "icmplb", "docker build -f deploy/Dockerfile"
)

// requiredCaps are the capabilities icmplb gets, everywhere: in the
// Dockerfile's setcap, compose's cap_add and the manifests' capabilities.add.
// They must agree because the setcap list is also the least a container may
// grant (exec fails on a file capability outside the bounding set), so
// NET_RAW, which only the backend probes use, is in every grant. Why each is
// needed is explained in the Dockerfile and docs/containers-and-kubernetes.md.
var requiredCaps = []string{"BPF", "NET_ADMIN", "NET_RAW", "PERFMON"}

// otelVars are the OTEL_* variables icmplb's trace pipeline honours: those
// the OTLP trace exporters (otlptracehttp, otlptracegrpc), the resource
// detector (resource.WithFromEnv) and the batch span processor of the OTel Go
// SDK read (checked against the SDK's source, v1.47), and the protocol switch
// of exporter/otel.go. Not OTEL_TRACES_SAMPLER: exporter/otel.go samples
// everything, the kernel has already sampled; not OTEL_SDK_DISABLED, which
// the Go SDK ignores.
var otelVars = func() map[string]bool {
	m := map[string]bool{}
	for _, v := range strings.Fields("SERVICE_NAME RESOURCE_ATTRIBUTES BSP_SCHEDULE_DELAY BSP_EXPORT_TIMEOUT BSP_MAX_QUEUE_SIZE BSP_MAX_EXPORT_BATCH_SIZE") {
		m["OTEL_"+v] = true
	}
	for _, v := range strings.Fields("ENDPOINT PROTOCOL INSECURE HEADERS TIMEOUT COMPRESSION CERTIFICATE CLIENT_CERTIFICATE CLIENT_KEY") {
		m["OTEL_EXPORTER_OTLP_"+v], m["OTEL_EXPORTER_OTLP_TRACES_"+v] = true, true
	}
	return m
}()

var (
	// helperVars are the only other variables the manifests may set: the
	// Downward API values OTEL_RESOURCE_ATTRIBUTES is composed of.
	helperVars = []string{"NODE_NAME", "POD_NAME", "POD_NAMESPACE"}
	// examples stand in for what compose.yaml leaves to the user
	// (${VAR:?message}), fieldRefExamples for Downward API values, so that
	// the configuration check sees a full set.
	examples         = map[string]string{"ICMPLB_VIP": "192.0.2.100", "ICMPLB_BACKENDS": "192.0.2.11,192.0.2.12"}
	fieldRefExamples = map[string]string{"status.podIP": "10.244.1.23", "spec.nodeName": "node-1",
		"metadata.name": "icmplb-abcde", "metadata.namespace": namespace}
	// defaultPort is the agent's metrics port unless configured otherwise.
	defaultPort = config.DefaultListenAddress[strings.LastIndex(config.DefaultListenAddress, ":")+1:]
)

// expect reports a failure unless ok.
func expect(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Errorf(format, args...)
	}
}

func read(t *testing.T, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// readYAML decodes a YAML file into v by its JSON field names.
func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	if err := yaml.Unmarshal(read(t, file), v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// yamlFiles lists every *.yaml and *.yml under dir.
func yamlFiles(t *testing.T, dir string) (files []string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if ext := filepath.Ext(p); err == nil && !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// yamlDocs splits a YAML stream into its non-empty documents; a duplicate
// key is an error.
func yamlDocs(data []byte) (docs [][]byte, _ error) {
	r := kyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, err
		}
		if string(j) != "null" {
			docs = append(docs, doc)
		}
	}
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

func sameFile(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// ---- Kubernetes ------------------------------------------------------------------

// k8sDecoder decodes an object as the API server does with strict field
// validation: into the Go type of its kind, refusing unknown kinds, unknown or
// duplicate fields and values of the wrong type (an unquoted 0 in a
// ConfigMap's data, which kubectl would send as a number).
var k8sDecoder = func() runtime.Decoder {
	s, b := runtime.NewScheme(), runtime.NewSchemeBuilder(corev1.AddToScheme, appsv1.AddToScheme, monv1.AddToScheme)
	if err := b.AddToScheme(s); err != nil {
		panic(err)
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, s, s, kjson.SerializerOptions{Yaml: true, Strict: true})
}()

// k8sDoc is one object of a manifest.
type k8sDoc struct {
	file, kind string
	obj        runtime.Object
	metav1.Object
}

func decodeK8s(file string, data []byte) (out []k8sDoc, _ error) {
	docs, err := yamlDocs(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	for i, doc := range docs {
		obj, gvk, err := k8sDecoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", file, i+1, err)
		}
		m, _ := meta.Accessor(obj) // every registered type has ObjectMeta
		out = append(out, k8sDoc{file, gvk.Kind, obj, m})
	}
	return out, nil
}

// k8sDocs loads every object of the manifests, kustomizations aside.
func k8sDocs(t *testing.T) (docs []k8sDoc) {
	t.Helper()
	for _, f := range yamlFiles(t, k8sDir) {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		d, err := decodeK8s(f, read(t, f))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d...)
	}
	return docs
}

// isAgentImage tells whether an image is icmplb's.
func isAgentImage(image string) bool {
	name, _, _ := strings.Cut(path.Base(image), ":")
	return name == "icmplb"
}

// k8sContainer is a container of the manifests that runs icmplb, with its pod.
type k8sContainer struct {
	doc k8sDoc
	pod *corev1.PodTemplateSpec
	c   corev1.Container
}

func (c k8sContainer) String() string {
	return fmt.Sprintf("%s: %s %s container %s", c.doc.file, c.doc.kind, c.doc.GetName(), c.c.Name)
}

func agentContainers(docs []k8sDoc) (out []k8sContainer) {
	for _, d := range docs {
		var pod *corev1.PodTemplateSpec
		switch o := d.obj.(type) {
		case *appsv1.DaemonSet:
			pod = &o.Spec.Template
		case *appsv1.Deployment:
			pod = &o.Spec.Template
		default:
			continue
		}
		for _, c := range slices.Concat(pod.Spec.Containers, pod.Spec.InitContainers) {
			if isAgentImage(c.Image) {
				out = append(out, k8sContainer{d, pod, c})
			}
		}
	}
	return out
}

// ---- Compose ---------------------------------------------------------------------

type composeService struct{ types.ServiceConfig }

// loadCompose loads a compose file's content as `docker compose` does from
// deploy/ (schema, interpolation, paths), with examples for what the user must set.
func loadCompose(t *testing.T, data []byte) map[string]composeService {
	t.Helper()
	wd, _ := filepath.Abs(".")
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir: wd, Environment: examples, ConfigFiles: []types.ConfigFile{{Filename: composeFile, Content: data}},
	}, func(o *loader.Options) { o.SetProjectName("icmplb", true) })
	if err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	c := map[string]composeService{}
	for name, s := range p.Services {
		c[name] = composeService{s}
	}
	for _, s := range []string{"icmplb", "prometheus", "grafana", "tempo"} {
		if _, ok := c[s]; !ok {
			t.Fatalf("%s: no service %q", composeFile, s)
		}
	}
	return c
}

// hostPath maps a path inside a service's container to the file on this
// machine it is bind-mounted from.
func (s composeService) hostPath(p string) (string, bool) {
	best, bestLen := "", -1
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && len(v.Target) > bestLen &&
			(p == v.Target || strings.HasPrefix(p, strings.TrimSuffix(v.Target, "/")+"/")) {
			best, bestLen = filepath.Join(v.Source, strings.TrimPrefix(p, v.Target)), len(v.Target)
		}
	}
	return best, bestLen >= 0
}

// ---- How each place runs the agent -----------------------------------------------

type agentConfig struct {
	where           string
	env             map[string]string // resolved values
	args            []string
	uid             int64             // -1: the image's (non-root) user
	mounts          map[string]string // container path: host path
	capAdd, capDrop []string
	privileged      bool
}

func composeAgent(t *testing.T, c map[string]composeService) agentConfig {
	t.Helper()
	s := c["icmplb"]
	a := agentConfig{where: composeFile + " service icmplb", env: map[string]string{}, uid: -1, mounts: map[string]string{},
		args: slices.Concat(s.Entrypoint, s.Command), capAdd: s.CapAdd, capDrop: s.CapDrop, privileged: s.Privileged}
	for k, v := range s.Environment {
		if v != nil {
			a.env[k] = *v
		}
	}
	if s.User != "" {
		var err error
		a.uid, err = strconv.ParseInt(strings.Split(s.User, ":")[0], 10, 64)
		expect(t, err == nil, "%s: user %q is not numeric", a.where, s.User)
	}
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind {
			a.mounts[v.Target] = v.Source
		}
	}
	return a
}

func k8sAgents(t *testing.T, docs []k8sDoc) (agents []agentConfig) {
	t.Helper()
	configMaps := map[string]map[string]string{}
	for _, d := range docs {
		if cm, ok := d.obj.(*corev1.ConfigMap); ok {
			configMaps[cm.Name] = cm.Data
		}
	}
	for _, kc := range agentContainers(docs) {
		c, sc := kc.c, ptr.Deref(kc.c.SecurityContext, corev1.SecurityContext{})
		a := agentConfig{where: kc.String(), env: map[string]string{}, uid: ptr.Deref(sc.RunAsUser, -1), mounts: map[string]string{},
			args: slices.Concat(c.Command, c.Args), privileged: ptr.Deref(sc.Privileged, false)}
		for _, cp := range ptr.Deref(sc.Capabilities, corev1.Capabilities{}).Add {
			a.capAdd = append(a.capAdd, string(cp))
		}
		for _, cp := range ptr.Deref(sc.Capabilities, corev1.Capabilities{}).Drop {
			a.capDrop = append(a.capDrop, string(cp))
		}
		for _, ef := range c.EnvFrom {
			data, ok := configMaps[ptr.Deref(ef.ConfigMapRef, corev1.ConfigMapEnvSource{}).Name]
			expect(t, ok, "%s: envFrom %+v is not a ConfigMap of the manifests", a.where, ef)
			for k, v := range data {
				a.env[ef.Prefix+k] = v
			}
		}
		for _, e := range c.Env {
			v, ok := e.Value, true
			if e.ValueFrom != nil {
				v, ok = fieldRefExamples[ptr.Deref(e.ValueFrom.FieldRef, corev1.ObjectFieldSelector{}).FieldPath]
			}
			expect(t, ok, "%s: %s: valueFrom %+v is not a fieldRef the test has an example for", a.where, e.Name, e.ValueFrom)
			// $(VAR) as the kubelet expands it (kustomize keeps a copy of
			// its code): only variables defined before.
			a.env[e.Name] = fmt.Sprint(refvar.DoReplacements(v, func(name string) any {
				if val, ok := a.env[name]; ok {
					return val
				}
				t.Errorf("%s: %s: $(%s) is not defined before", a.where, e.Name, name)
				return "$(" + name + ")"
			}))
		}
		for _, m := range c.VolumeMounts {
			for _, v := range kc.pod.Spec.Volumes {
				if v.Name == m.Name && v.HostPath != nil {
					a.mounts[m.MountPath] = v.HostPath.Path
				}
			}
		}
		agents = append(agents, a)
	}
	return agents
}

func allAgents(t *testing.T) []agentConfig {
	t.Helper()
	agents := k8sAgents(t, k8sDocs(t))
	if len(agents) == 0 {
		t.Fatal("no container in the manifests runs the icmplb image")
	}
	return append(agents, composeAgent(t, loadCompose(t, read(t, composeFile))))
}

// ---- Tests: the agent's settings --------------------------------------------------

// TestAgentConfiguration checks the variables and flags each deployment gives
// the agent against the config package, and runs the agent's own parse and
// check on them (config.Parse: unknown flags, missing required ones, Validate).
func TestAgentConfiguration(t *testing.T) {
	envs, flags := map[string]bool{}, map[string]bool{}
	for _, f := range config.Flags() {
		envs[f.Env], flags[f.Name] = true, true
	}
	for _, a := range allAgents(t) {
		env := map[string]string{}
		for name, v := range a.env {
			switch prefix, _, _ := strings.Cut(name, "_"); prefix {
			case "ICMPLB":
				expect(t, envs[name], "%s: %s is not a variable of the config package", a.where, name)
				env[name] = v
			case "OTEL":
				expect(t, otelVars[name], "%s: %s is not a variable the OTel Go SDK reads", a.where, name)
			default:
				expect(t, slices.Contains(helperVars, name), "%s: %s is neither ICMPLB_*, OTEL_* nor one of %v: a typo?", a.where, name, helperVars)
			}
		}
		// No arguments: the image's CMD, run.
		expect(t, len(a.args) == 0 || a.args[0] == "run", "%s: arguments %q do not start with the command run", a.where, a.args)
		args := a.args[min(1, len(a.args)):]
		for _, arg := range args {
			name, _, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
			expect(t, !strings.HasPrefix(arg, "--") || flags[name], "%s: %s is not a flag of the config package", a.where, arg)
		}
		_, _, err := config.Parse(args, env)
		expect(t, err == nil, "%s: config.Parse: %v", a.where, err)
		for _, name := range []string{"ICMPLB_BPFFS", "ICMPLB_WEB_CONFIG_FILE"} {
			expect(t, a.env[name] == "" || filepath.IsAbs(a.env[name]), "%s: %s=%q: not an absolute path", a.where, name, a.env[name])
		}
		if fs := a.env["ICMPLB_BPFFS"]; fs != "" {
			expect(t, a.mounts[fs] == "/sys/fs/bpf", "%s: ICMPLB_BPFFS=%s is not the host's /sys/fs/bpf mounted there (mounts %v)", a.where, fs, a.mounts)
			// The host's bpffs is root's, mode 0700: only uid 0 can pin there
			// without CAP_DAC_OVERRIDE ("create pin directory: permission
			// denied" as uid 65532).
			expect(t, a.uid == 0, "%s: ICMPLB_BPFFS is set but the agent runs as uid %d, not 0, which pinning under the host's bpffs needs", a.where, a.uid)
		}
		p := a.env["OTEL_EXPORTER_OTLP_PROTOCOL"]
		expect(t, p == "" || p == "grpc" || p == "http/protobuf", "%s: OTEL_EXPORTER_OTLP_PROTOCOL=%q: exporter/otel.go takes grpc or http/protobuf", a.where, p)
		if e := a.env["OTEL_EXPORTER_OTLP_ENDPOINT"]; e != "" {
			u, err := url.Parse(e)
			expect(t, err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Port() != "", "%s: OTEL_EXPORTER_OTLP_ENDPOINT=%q: want http(s)://host:port", a.where, e)
		}
	}
}

// TestVariablesMentioned: every ICMPLB_* name in the deployment files,
// comments included, is a variable of the agent.
func TestVariablesMentioned(t *testing.T) {
	envs := map[string]bool{"ICMPLB_IMAGE_VERSION": true} // compose's image tag, not the agent's
	for _, f := range config.Flags() {
		envs[f.Env] = true
	}
	name := regexp.MustCompile(`\bICMPLB_[A-Z0-9_]*[A-Z0-9]`)
	for _, f := range append(yamlFiles(t, "."), dockerfile) {
		for _, v := range name.FindAllString(string(read(t, f)), -1) {
			expect(t, envs[v], "%s mentions %s, which is not a variable of the config package", f, v)
		}
	}
}

func TestCapabilities(t *testing.T) {
	for _, a := range allAgents(t) {
		expect(t, sameSet(a.capAdd, requiredCaps) && slices.Equal(a.capDrop, []string{"ALL"}) && !a.privileged,
			"%s: capabilities added %v, dropped %v, privileged %v; want exactly %v, [ALL], false", a.where, a.capAdd, a.capDrop, a.privileged, requiredCaps)
	}
	df := parseDockerfile(t)
	var caps []string
	for _, st := range df.stages {
		for _, c := range df.shell(t, st.Commands...) {
			if len(c.args) < 3 || c.args[0] != "setcap" {
				continue
			}
			for _, w := range c.args[1 : len(c.args)-1] {
				spec, _, _ := strings.Cut(w, "+")
				for c := range strings.SplitSeq(spec, ",") {
					caps = append(caps, strings.ToUpper(strings.TrimPrefix(c, "cap_")))
				}
			}
		}
	}
	expect(t, sameSet(caps, requiredCaps), "%s: setcap gives %v, want %v", dockerfile, caps, requiredCaps)
	for file, text := range map[string]string{dockerfile: df.text, containersDoc: string(read(t, containersDoc))} {
		for _, c := range requiredCaps {
			expect(t, strings.Contains(text, "CAP_"+c), "%s does not explain CAP_%s", file, c)
		}
	}
}

// ---- Tests: Kubernetes ------------------------------------------------------------

func TestYAMLParses(t *testing.T) {
	files := yamlFiles(t, ".")
	expect(t, len(files) >= 10, "found only %v", files)
	for _, f := range files {
		docs, err := yamlDocs(read(t, f))
		expect(t, err == nil && len(docs) > 0, "%s: %d documents, %v", f, len(docs), err)
	}
}

func TestKubernetesObjects(t *testing.T) {
	kinds := map[string]int{}
	for _, d := range k8sDocs(t) {
		kinds[d.kind]++
		expect(t, d.GetName() != "" && (d.kind == "Namespace" || d.GetNamespace() == namespace),
			"%s: %s %q in namespace %q; want a name, and namespace %s", d.file, d.kind, d.GetName(), d.GetNamespace(), namespace)
		if ds, ok := d.obj.(*appsv1.DaemonSet); ok {
			ps := ds.Spec.Template.Spec
			expect(t, ps.HostNetwork && ps.DNSPolicy == corev1.DNSClusterFirstWithHostNet,
				"%s: hostNetwork %v, dnsPolicy %q; want true and ClusterFirstWithHostNet", d.file, ps.HostNetwork, ps.DNSPolicy)
			expect(t, slices.ContainsFunc(ps.Volumes, func(v corev1.Volume) bool {
				return v.HostPath != nil && v.HostPath.Path == "/sys/fs/bpf" && ptr.Deref(v.HostPath.Type, "") == corev1.HostPathDirectoryOrCreate
			}), "%s: the DaemonSet does not mount the host's /sys/fs/bpf (hostPath type DirectoryOrCreate)", d.file)
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Deployment", "PodMonitor", "PrometheusRule"} {
		expect(t, kinds[k] > 0, "no %s among the manifests", k)
	}
}

func TestProbesAndPorts(t *testing.T) {
	agents := agentContainers(k8sDocs(t))
	expect(t, len(agents) >= 2, "found %d icmplb containers, want the DaemonSet's and the sidecar's", len(agents))
	for _, kc := range agents {
		ports := map[string]string{}
		for _, p := range kc.c.Ports {
			ports[p.Name] = strconv.Itoa(int(p.ContainerPort))
		}
		expect(t, ports["metrics"] == defaultPort, "%s: port metrics is %q, want %s", kc, ports["metrics"], defaultPort)
		for path, p := range map[string]*corev1.Probe{"/healthz": kc.c.LivenessProbe, "/readyz": kc.c.ReadinessProbe} {
			h := ptr.Deref(ptr.Deref(p, corev1.Probe{}).HTTPGet, corev1.HTTPGetAction{})
			expect(t, h.Path == path && cmp.Or(ports[h.Port.String()], h.Port.String()) == defaultPort,
				"%s: probe %+v, want an httpGet of %s on the metrics port %s (liveness /healthz, readiness /readyz)", kc, h, path, defaultPort)
		}
	}
}

func TestPodMonitor(t *testing.T) {
	docs := k8sDocs(t)
	var pm monv1.PodMonitor
	for _, d := range docs {
		if o, ok := d.obj.(*monv1.PodMonitor); ok {
			pm = *o
		}
	}
	if pm.Name == "" {
		t.Fatal("no PodMonitor")
	}
	// The Prometheus Operator names the job namespace/name unless jobLabel
	// says otherwise; the rules want "icmplb" in it.
	job, sel, ns := pm.Namespace+"/"+pm.Name, pm.Spec.Selector.MatchLabels, pm.Spec.NamespaceSelector
	expect(t, pm.Spec.JobLabel == "" && strings.Contains(job, "icmplb"), "PodMonitor: job %q (jobLabel %q): the rules' IcmplbExporterDown wants a job containing icmplb", job, pm.Spec.JobLabel)
	expect(t, len(sel) > 0, "PodMonitor: no selector.matchLabels")
	for _, kc := range agentContainers(docs) {
		for k, v := range sel {
			expect(t, kc.pod.Labels[k] == v, "%s: the pods lack the label %s=%s the PodMonitor selects", kc, k, v)
		}
		n := kc.doc.GetNamespace()
		expect(t, ns.Any || n == pm.Namespace || slices.Contains(ns.MatchNames, n), "%s: the PodMonitor does not look in namespace %s", kc, n)
		for _, ep := range pm.Spec.PodMetricsEndpoints {
			port := ptr.Deref(ep.Port, "")
			expect(t, slices.ContainsFunc(kc.c.Ports, func(p corev1.ContainerPort) bool { return p.Name == port }), "%s: no port %q for the PodMonitor", kc, port)
			expect(t, ep.Path == "" || ep.Path == "/metrics", "PodMonitor: path %q", ep.Path)
		}
	}
}

// TestPrometheusRule: the PrometheusRule's groups are those of the rules
// file, which holds groups only, each field one the operator knows. -update
// puts the rules file's groups, comments and all, under the manifest's spec.
func TestPrometheusRule(t *testing.T) {
	rules, err := os.ReadFile(rulesFile)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s does not exist yet: nothing to compare the PrometheusRule with", rulesFile)
	}
	var want monv1.PrometheusRuleSpec
	if err == nil {
		err = yaml.UnmarshalStrict(rules, &want)
	}
	if err != nil || len(want.Groups) == 0 {
		t.Fatalf("%s: %d groups, %v", rulesFile, len(want.Groups), err)
	}
	if *update {
		head, _, ok := strings.Cut(string(read(t, ruleManifest)), "\nspec:\n")
		if !ok {
			t.Fatalf("%s: no top-level spec:", ruleManifest)
		}
		var b strings.Builder
		b.WriteString(head + "\nspec:\n")
		lines := strings.Split(string(rules), "\n")
		for _, l := range lines[max(0, slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "groups:") })):] {
			if strings.TrimSpace(l) != "" {
				b.WriteString("  " + l)
			}
			b.WriteString("\n")
		}
		if err := os.WriteFile(ruleManifest, []byte(strings.TrimRight(b.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	docs, err := decodeK8s(ruleManifest, read(t, ruleManifest))
	if err != nil || len(docs) != 1 || docs[0].kind != "PrometheusRule" {
		t.Fatalf("%s: want one PrometheusRule (%v)", ruleManifest, err)
	}
	expect(t, reflect.DeepEqual(docs[0].obj.(*monv1.PrometheusRule).Spec, want),
		"%s: spec.groups differ from the groups of %s; run\n  go test ./deploy -run TestPrometheusRule -update", ruleManifest, rulesFile)
}

func TestKustomizations(t *testing.T) {
	for _, dir := range []string{k8sDir, monitoringDir} {
		var k kusttypes.Kustomization
		if err := yaml.UnmarshalStrict(read(t, filepath.Join(dir, "kustomization.yaml")), &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		var want []string
		for _, f := range files {
			if b := filepath.Base(f); b != "kustomization.yaml" {
				want = append(want, b)
			}
		}
		expect(t, sameSet(k.Resources, want) && k.Namespace == namespace,
			"%s/kustomization.yaml: resources %v in namespace %q, want the directory's %v in %s", dir, k.Resources, k.Namespace, want, namespace)
		for _, img := range k.Images {
			expect(t, isAgentImage(img.Name), "%s/kustomization.yaml: image %q is not the one the manifests use", dir, img.Name)
		}
		// Built as `kubectl apply -k` builds it.
		resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatalf("kustomize build %s: %v", dir, err)
		}
		out, _ := resMap.AsYaml()
		docs, err := decodeK8s("kustomize build "+dir, out)
		expect(t, err == nil && len(docs) == len(k.Resources), "kustomize build %s: %d objects (%v), want %d", dir, len(docs), err, len(k.Resources))
		for _, d := range docs {
			expect(t, d.kind == "Namespace" || d.GetNamespace() == namespace, "kustomize build %s: %s %s in namespace %q", dir, d.kind, d.GetName(), d.GetNamespace())
		}
	}
}

// ---- Tests: the Dockerfile against the Makefile ------------------------------------

type dockerfileT struct {
	text   string
	stages []instructions.Stage
	args   []instructions.ArgCommand // before the first FROM
}

func parseDockerfile(t *testing.T) dockerfileT {
	t.Helper()
	data := read(t, dockerfile)
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", dockerfile, err)
	}
	stages, args, err := instructions.Parse(res.AST, nil)
	if err != nil || len(stages) < 2 {
		t.Fatalf("%s: %d stages (%v), want a build stage and a final one", dockerfile, len(stages), err)
	}
	return dockerfileT{string(data), stages, args}
}

// commands are the instructions of type C among cmds.
func commands[C instructions.Command](cmds []instructions.Command) (out []C) {
	for _, c := range cmds {
		if c, ok := c.(C); ok {
			out = append(out, c)
		}
	}
	return out
}

// shellCmd is a simple command of a shell script.
type shellCmd struct {
	env  map[string]string // NAME=value before the command
	args []string
}

// shellCommands parses a script with mvdan.cc/sh. Quotes and escapes are
// resolved as the shell would; a parameter ($V, ${V}) is kept as "${V}", and
// one inside single quotes, which the shell would not expand, is an error.
func shellCommands(script string) (cmds []shellCmd, _ error) {
	f, err := syntax.NewParser().Parse(strings.NewReader(script), "")
	if err != nil {
		return nil, err
	}
	cfg := &expand.Config{Env: expand.FuncEnviron(func(name string) string { return "${" + name + "}" })}
	word := func(w *syntax.Word) string {
		s, e := expand.Literal(cfg, w)
		err = errors.Join(err, e)
		return s
	}
	syntax.Walk(f, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.SglQuoted:
			if strings.Contains(n.Value, "$") {
				err = errors.Join(err, fmt.Errorf("variable inside single quotes is not expanded: '%s'", n.Value))
			}
		case *syntax.CallExpr:
			c := shellCmd{env: map[string]string{}}
			for _, a := range n.Assigns {
				c.env[a.Name.Value] = word(a.Value)
			}
			for _, w := range n.Args {
				c.args = append(c.args, word(w))
			}
			cmds = append(cmds, c)
		}
		return true
	})
	return cmds, err
}

// shell is every command of the RUN instructions among cmds.
func (df dockerfileT) shell(t *testing.T, cmds ...instructions.Command) (out []shellCmd) {
	t.Helper()
	for _, run := range commands[*instructions.RunCommand](cmds) {
		c, err := shellCommands(strings.Join(run.CmdLine, " "))
		if err != nil {
			t.Fatalf("%s line %d: %v", dockerfile, run.Location()[0].Start.Line, err)
		}
		out = append(out, c...)
	}
	return out
}

// goBuild is a `go build` command: its environment, output, and the rest of
// its arguments (flags and packages) in order.
type goBuild struct {
	env  map[string]string
	out  string
	rest []string
}

func parseGoBuild(c shellCmd) (b goBuild, ok bool) {
	if len(c.args) < 2 || c.args[0] != "go" || c.args[1] != "build" {
		return b, false
	}
	b.env = c.env
	for i := 2; i < len(c.args); i++ {
		if c.args[i] == "-o" && i+1 < len(c.args) {
			b.out, i = c.args[i+1], i+1
		} else {
			b.rest = append(b.rest, c.args[i])
		}
	}
	return b, true
}

// dockerBuild finds the Dockerfile's go build: the command, its stage and the
// index of its RUN among the stage's instructions.
func (df dockerfileT) dockerBuild(t *testing.T) (goBuild, instructions.Stage, int) {
	t.Helper()
	for _, st := range df.stages {
		for i, c := range st.Commands {
			for _, sc := range df.shell(t, c) {
				if b, ok := parseGoBuild(sc); ok {
					return b, st, i
				}
			}
		}
	}
	t.Fatalf("%s: no RUN with go build", dockerfile)
	return goBuild{}, instructions.Stage{}, 0
}

// makefileBuild is the Makefile's build recipe as make expands it, with
// $(VERSION) left to the shell as ${VERSION}, as in the Dockerfile.
func makefileBuild(t *testing.T) goBuild {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	out, err := exec.Command("make", "-s", "-n", "--no-print-directory", "-C", "..", "build", "GO=go", "VERSION=@VERSION@").Output()
	cmds, perr := shellCommands(string(out))
	b, ok := goBuild{}, false
	if err == nil && perr == nil && len(cmds) == 1 {
		b, ok = parseGoBuild(cmds[0])
	}
	if !ok {
		t.Fatalf("%s: build recipe %q, want one go build command (%v, %v)", makefile, out, err, perr)
	}
	for i := range b.rest {
		b.rest[i] = strings.ReplaceAll(b.rest[i], "@VERSION@", "${VERSION}")
	}
	return b
}

func TestDockerfileBuildsLikeMakefile(t *testing.T) {
	mk, df := makefileBuild(t), parseDockerfile(t)
	db, st, at := df.dockerBuild(t)
	expect(t, st.Name != "", "%s: the build stage has no name (FROM ... AS build)", dockerfile)
	env := maps.Clone(db.env)
	delete(env, "GOOS")
	delete(env, "GOARCH")
	expect(t, maps.Equal(env, mk.env) && slices.Equal(db.rest, mk.rest),
		"go build differs (GOOS, GOARCH and -o aside):\n  %s: %v %q\n  Makefile:   %v %q", dockerfile, db.env, db.rest, mk.env, mk.rest)
	hasVersion := func(s string) bool { return strings.Contains(s, "main.version=${VERSION}") }
	expect(t, mk.env["CGO_ENABLED"] == "0" && slices.Contains(mk.rest, "-trimpath") && slices.ContainsFunc(mk.rest, hasVersion),
		"Makefile build %+v: the parse lost CGO_ENABLED=0, -trimpath or -X main.version", mk)
	// ${VERSION} must be an ARG of the stage, declared before the RUN.
	expect(t, !slices.ContainsFunc(db.rest, hasVersion) || slices.ContainsFunc(commands[*instructions.ArgCommand](st.Commands[:at]),
		func(a *instructions.ArgCommand) bool { return a.Args[0].Key == "VERSION" }),
		"%s: -ldflags uses ${VERSION} but the build stage declares no ARG VERSION before it", dockerfile)
	// The final stage takes the built binary.
	expect(t, slices.ContainsFunc(commands[*instructions.CopyCommand](df.stages[len(df.stages)-1].Commands), func(c *instructions.CopyCommand) bool {
		return c.From == st.Name && slices.Equal(c.SourcePaths, []string{db.out}) && c.DestPath == "/icmplb"
	}), "%s: the final stage does not COPY --from=%s %s /icmplb", dockerfile, st.Name, db.out)
}

func goCmd(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

func TestDockerfileSources(t *testing.T) {
	df := parseDockerfile(t)
	_, st, at := df.dockerBuild(t)
	var copied []string
	for _, c := range commands[*instructions.CopyCommand](st.Commands[:at]) {
		if c.From != "" {
			continue // from another stage or image
		}
		for _, src := range c.SourcePaths {
			expect(t, strings.TrimSuffix(src, "/") == strings.TrimSuffix(c.DestPath, "/") || c.DestPath == "./",
				"%s line %d: COPY %s %s does not keep the repository layout", dockerfile, c.Location()[0].Start.Line, src, c.DestPath)
			copied = append(copied, strings.TrimSuffix(src, "/"))
		}
	}
	// go.mod, go.sum and every package of the module the binary is built from.
	root, _ := filepath.Abs("..")
	need := []string{"go.mod", "go.sum"}
	for dir := range strings.FieldsSeq(goCmd(t, "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/icmplb")) {
		rel, _ := filepath.Rel(root, dir)
		need = append(need, filepath.ToSlash(rel))
	}
	for _, n := range need {
		expect(t, slices.ContainsFunc(copied, func(c string) bool { return n == c || strings.HasPrefix(n, c+"/") }),
			"%s: the build stage does not copy %s, which the binary is built from", dockerfile, n)
	}
	// A Go at least as new as go.mod asks: the golang images set
	// GOTOOLCHAIN=local and would not fetch a newer one. The image is
	// expanded as BuildKit expands FROM, with the ARGs before it.
	var env []string
	for _, a := range df.args {
		for _, kv := range a.Args {
			env = append(env, kv.String())
		}
	}
	image, _, err := shell.NewLex('\\').ProcessWord(st.BaseName, shell.EnvsFromSlice(env))
	tag := regexp.MustCompile(`^golang:(\d+(?:\.\d+)*)`).FindStringSubmatch(image)
	if err != nil || tag == nil {
		t.Fatalf("%s: build stage image %q is not golang:VERSION-... (%v)", dockerfile, image, err)
	}
	// A tag without a patch version (golang:1.26) is the newest of its
	// release: compare it with go.mod's language version.
	want := "go" + goCmd(t, "list", "-m", "-f", "{{.GoVersion}}")
	if strings.Count(tag[1], ".") < 2 {
		want = version.Lang(want)
	}
	expect(t, version.Compare("go"+tag[1], want) >= 0, "%s: build stage %s is older than go.mod's %s", dockerfile, image, want)
}

func TestDockerfileFinalStage(t *testing.T) {
	stages := parseDockerfile(t).stages
	st := stages[len(stages)-1]
	expect(t, st.BaseName == "scratch" || strings.HasPrefix(st.BaseName, "gcr.io/distroless/static"),
		"%s: final stage %q, want gcr.io/distroless/static... or scratch", dockerfile, st.BaseName)
	var user string
	var expose []string
	run := map[string]*instructions.ShellDependantCmdLine{}
	for _, c := range st.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			expose = c.Ports
		case *instructions.EntrypointCommand:
			run["ENTRYPOINT"] = &c.ShellDependantCmdLine
		case *instructions.CmdCommand:
			run["CMD"] = &c.ShellDependantCmdLine
		}
	}
	uid, err := strconv.Atoi(strings.Split(user, ":")[0])
	expect(t, err == nil && uid != 0, "%s: USER %q, want a numeric non-root uid (Kubernetes verifies runAsNonRoot only on numbers)", dockerfile, user)
	expect(t, slices.Equal(expose, []string{defaultPort}) || slices.Equal(expose, []string{defaultPort + "/tcp"}),
		"%s: EXPOSE %q, want %s (config.DefaultListenAddress)", dockerfile, expose, defaultPort)
	for cmd, want := range map[string][]string{"ENTRYPOINT": {"/icmplb"}, "CMD": {"run"}} {
		c := ptr.Deref(run[cmd], instructions.ShellDependantCmdLine{PrependShell: true})
		expect(t, !c.PrependShell && slices.Equal(c.CmdLine, want), "%s: %s %q (shell form %v), want %q in exec form", dockerfile, cmd, c.CmdLine, c.PrependShell, want)
	}
}

func TestContainersDoc(t *testing.T) {
	doc := string(read(t, containersDoc))
	for _, want := range []string{"# Containers and Kubernetes", dockerBuildCmd, "docker compose -f deploy/compose.yaml up",
		"/sys/fs/bpf", "kubectl apply -k deploy/kubernetes", "PodMonitor", "PrometheusRule", "ICMPLB_"} {
		expect(t, strings.Contains(doc, want), "%s does not mention %q", containersDoc, want)
	}
	expect(t, strings.Contains(parseDockerfile(t).text, dockerBuildCmd), "%s does not show %q", dockerfile, dockerBuildCmd)
}

// ---- Tests: compose wiring ------------------------------------------------------------

type promConfigT struct {
	Global struct {
		ScrapeInterval string `json:"scrape_interval"`
	}
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string                       `json:"job_name"`
		StaticConfigs []struct{ Targets []string } `json:"static_configs"`
	} `json:"scrape_configs"`
}

func TestComposePrometheus(t *testing.T) {
	c := loadCompose(t, read(t, composeFile))
	icmplb, prom := c["icmplb"], c["prometheus"]
	expect(t, icmplb.NetworkMode == "host", "icmplb: network_mode %q, want host", icmplb.NetworkMode)
	b := ptr.Deref(icmplb.Build, types.BuildConfig{})
	expect(t, sameFile(filepath.Join(b.Context, b.Dockerfile), dockerfile) && ptr.Deref(b.Args["VERSION"], "") != "",
		"icmplb: build %+v, want context .., dockerfile deploy/Dockerfile and the VERSION arg", b)
	// The config Prometheus runs is this file, with the dashboards' rules,
	// here (promtool) and in the container.
	var configPath string
	for _, a := range prom.Command {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configPath = v
		}
	}
	if host, ok := prom.hostPath(configPath); !ok || !sameFile(host, promConfig) {
		t.Fatalf("prometheus: --config.file %q is not mounted from %s", configPath, promConfig)
	}
	var pc promConfigT
	readYAML(t, promConfig, &pc)
	expect(t, len(pc.RuleFiles) > 0, "%s: no rule_files", promConfig)
	for _, r := range pc.RuleFiles {
		inContainer := path.Join(path.Dir(configPath), r)
		host, ok := prom.hostPath(inContainer)
		expect(t, !filepath.IsAbs(r) && sameFile(filepath.Join(filepath.Dir(promConfig), r), rulesFile) && ok && sameFile(host, rulesFile),
			"%s: rule file %s: want a relative path to %s, here and in the container (%s, mounted from %q)", promConfig, r, rulesFile, inContainer, host)
	}
	// It scrapes the agent on the host network through host-gateway.
	port := cmp.Or(composeAgent(t, c).env["ICMPLB_WEB_LISTEN_ADDRESS"], config.DefaultListenAddress)
	port = port[strings.LastIndex(port, ":")+1:]
	var jobs []string
	for _, sc := range pc.ScrapeConfigs {
		if slices.ContainsFunc(sc.StaticConfigs, func(s struct{ Targets []string }) bool {
			return slices.Contains(s.Targets, "host.docker.internal:"+port)
		}) {
			jobs = append(jobs, sc.JobName)
		}
	}
	expect(t, len(jobs) > 0, "%s: no job scrapes host.docker.internal:%s", promConfig, port)
	for _, j := range jobs {
		expect(t, strings.Contains(j, "icmplb"), "%s: job %q scrapes icmplb; the rules want a job name containing icmplb", promConfig, j)
	}
	expect(t, slices.Contains(prom.ExtraHosts["host.docker.internal"], "host-gateway"), "prometheus: extra_hosts %v lacks host.docker.internal:host-gateway", prom.ExtraHosts)
	expect(t, slices.Contains(prom.Command, "--enable-feature=exemplar-storage"), "prometheus: exemplar storage is off; the latency panels' exemplars need it")
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
	expect(t, err == nil, "promtool check config %s: %v\n%s", promConfig, err, out)
}

// provisioned decodes the Grafana provisioning files mounted at dir, each
// into a new value of v's type, and returns them.
func provisioned[T any](t *testing.T, g composeService, dir string) (out []T) {
	t.Helper()
	host, ok := g.hostPath(dir)
	files, _ := filepath.Glob(filepath.Join(host, "*.y*ml"))
	if !ok || len(files) == 0 {
		t.Fatalf("grafana: no provisioning file mounted at %s", dir)
	}
	for _, f := range files {
		var v T
		readYAML(t, f, &v)
		out = append(out, v)
	}
	return out
}

func TestComposeGrafana(t *testing.T) {
	c := loadCompose(t, read(t, composeFile))
	var pc promConfigT
	readYAML(t, promConfig, &pc)
	var tempo struct {
		Server struct {
			HTTPListenPort int `json:"http_listen_port"`
		}
	}
	readYAML(t, tempoConfig, &tempo)

	type datasource struct {
		Name, UID, Type, URL string
		IsDefault            bool
		JSONData             struct {
			TimeInterval       string
			ExemplarTraceIDDst []struct{ Name, DatasourceUID string } `json:"exemplarTraceIdDestinations"`
		}
	}
	var all []datasource
	for _, f := range provisioned[struct{ Datasources []datasource }](t, c["grafana"], "/etc/grafana/provisioning/datasources") {
		all = append(all, f.Datasources...)
	}
	var prom datasource
	var traces string
	for _, d := range all {
		if d.UID == "prometheus" {
			prom = d
		}
		if d.Type == "tempo" || d.Type == "jaeger" {
			traces = d.UID
		}
	}
	expect(t, prom.Type == "prometheus" && prom.IsDefault && prom.JSONData.TimeInterval == pc.Global.ScrapeInterval,
		"grafana: want the default data source to be Prometheus with uid prometheus and timeInterval %s (scrape_interval, for $__rate_interval), got %+v",
		pc.Global.ScrapeInterval, prom)
	expect(t, traces != "" && len(prom.JSONData.ExemplarTraceIDDst) > 0, "grafana: no trace data source, or no exemplar link to it from Prometheus")
	for _, e := range prom.JSONData.ExemplarTraceIDDst {
		expect(t, e.Name == "trace_id" && e.DatasourceUID == traces, "grafana: exemplar link %+v, want trace_id to %s (exporter/exemplars.go labels exemplars trace_id)", e, traces)
	}
	// URLs name compose services, on the ports they listen on.
	listen := map[string]string{"prometheus": "9090", "tempo": strconv.Itoa(tempo.Server.HTTPListenPort)}
	for _, d := range all {
		u, err := url.Parse(d.URL)
		_, ok := c[u.Hostname()]
		expect(t, err == nil && ok && u.Port() == listen[u.Hostname()], "grafana: %s at %s: want a compose service on the port it listens on (%v)", d.Name, d.URL, listen)
	}
	// Dashboards: the provider's path holds the dashboards' JSON.
	for _, f := range provisioned[struct {
		Providers []struct{ Options struct{ Path string } }
	}](t, c["grafana"], "/etc/grafana/provisioning/dashboards") {
		for _, p := range f.Providers {
			host, ok := c["grafana"].hostPath(p.Options.Path)
			for _, db := range []string{"icmplb-overview.json", "icmplb-backend.json"} {
				_, err := os.Stat(filepath.Join(host, db))
				expect(t, ok && sameFile(host, dashboardsDir) && err == nil, "grafana: dashboard provider path %s is not mounted from %s, or lacks %s", p.Options.Path, dashboardsDir, db)
			}
		}
	}
}

// TestComposeTraces follows the spans: icmplb (host network) sends OTLP to a
// port on the host that the trace backend publishes, onto its receiver.
func TestComposeTraces(t *testing.T) {
	c := loadCompose(t, read(t, composeFile))
	a := composeAgent(t, c)
	n, err := strconv.Atoi(a.env["ICMPLB_TRACE_SAMPLE"])
	expect(t, err == nil && n > 0, "%s: ICMPLB_TRACE_SAMPLE=%q: tracing is off, so the trace backend gets nothing", a.where, a.env["ICMPLB_TRACE_SAMPLE"])
	u, err := url.Parse(a.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	if err != nil || (u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost") {
		t.Fatalf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %q: want http://127.0.0.1:PORT, a port the trace backend publishes", a.where, u)
	}
	proto := cmp.Or(a.env["OTEL_EXPORTER_OTLP_PROTOCOL"], "http/protobuf")
	var tc struct {
		Distributor struct {
			Receivers struct {
				OTLP struct {
					Protocols map[string]struct{ Endpoint string }
				}
			}
		}
	}
	readYAML(t, tempoConfig, &tc)
	recv := tc.Distributor.Receivers.OTLP.Protocols[map[string]string{"http/protobuf": "http", "grpc": "grpc"}[proto]]
	host, rport, err := net.SplitHostPort(recv.Endpoint)
	if err != nil || host != "0.0.0.0" {
		t.Fatalf("%s: the OTLP %s receiver listens on %q; published ports need 0.0.0.0:PORT", tempoConfig, proto, recv.Endpoint)
	}
	published := map[string]string{}
	for _, p := range c["tempo"].Ports {
		published[p.Published] = strconv.Itoa(int(p.Target))
	}
	expect(t, published[u.Port()] == rport, "compose: icmplb sends to host port %s, which tempo publishes to %q, not to its receiver's %s", u.Port(), published[u.Port()], rport)
	h, ok := c["tempo"].hostPath("/etc/tempo/tempo.yaml")
	expect(t, ok && sameFile(h, tempoConfig), "compose: tempo does not mount %s", tempoConfig)
}
