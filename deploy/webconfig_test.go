// SPDX-License-Identifier: MIT

package deploy

// The deployment kit's endpoint security: the example web config file, and
// the commented settings that enable it in compose and Kubernetes, which a
// user only has to uncomment.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/icmplb/icmplb/exporter"
	"github.com/icmplb/icmplb/internal/webtest"
)

const (
	webConfigExample = "web/web-config.yml"
	webPlaceholder   = "REPLACE-WITH-A-BCRYPT-HASH"
	daemonSetFile    = "kubernetes/daemonset.yaml"
	webSecretName    = "icmplb-web-config"
)

// TestWebConfigExample: the example is a valid exporter-toolkit web config
// once its certificate and hash are filled in, and refused as it is, so that
// nobody runs it with a placeholder for a password.
func TestWebConfigExample(t *testing.T) {
	example := read(t, webConfigExample)
	if !bytes.Contains(example, []byte(webPlaceholder)) {
		t.Fatalf("%s: no placeholder %s", webConfigExample, webPlaceholder)
	}
	dir := t.TempDir()
	cert := webtest.SelfSigned(t, dir, "host.docker.internal", "127.0.0.1")
	// The example names the files as `kubectl create secret tls` does.
	errs := []error{os.Rename(cert.CertFile, filepath.Join(dir, "tls.crt")), os.Rename(cert.KeyFile, filepath.Join(dir, "tls.key"))}
	asIs, filled := filepath.Join(dir, "as-is.yml"), filepath.Join(dir, "web-config.yml")
	// A real hash, as htpasswd -nBC 12 prints it.
	_, hash, _ := strings.Cut(strings.TrimSpace(string(read(t, webtest.WriteConfig(t, t.TempDir(), nil, map[string]string{"u": "p"}, "")))), "u: ")
	errs = append(errs, os.WriteFile(asIs, example, 0o600), os.WriteFile(filled, bytes.ReplaceAll(example, []byte(webPlaceholder), []byte(hash)), 0o600))
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	expect(t, exporter.ValidateWebConfigFile(asIs) != nil, "%s with its placeholder hash: accepted, want refused", webConfigExample)
	err := exporter.ValidateWebConfigFile(filled)
	expect(t, err == nil, "%s filled in: %v", webConfigExample, err)
}

// uncomment removes "# " from the commented lines that read start and from
// the more deeply indented commented lines that follow each: a block the
// files tell the user to uncomment.
func uncomment(t *testing.T, file string, data []byte, starts ...string) []byte {
	t.Helper()
	lines := strings.Split(string(data), "\n")
	for _, start := range starts {
		found := 0
		for i := 0; i < len(lines); i++ {
			indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i]), "#")) != start || !strings.HasPrefix(lines[i][indent:], "# ") {
				continue
			}
			found++
			lines[i] = lines[i][:indent] + lines[i][indent+2:]
			for i+1 < len(lines) && strings.HasPrefix(lines[i+1], strings.Repeat(" ", indent)+"#   ") {
				i++
				lines[i] = lines[i][:indent] + lines[i][indent+2:]
			}
		}
		expect(t, found > 0, "%s: no commented line %q to uncomment", file, start)
	}
	return []byte(strings.Join(lines, "\n"))
}

// TestComposeWebConfig uncomments what compose.yaml says enables TLS and
// basic auth: the agent must find the example config, and Prometheus the CA
// and password files, in the same mounted directory.
func TestComposeWebConfig(t *testing.T) {
	c := loadCompose(t, uncomment(t, composeFile, read(t, composeFile),
		"ICMPLB_WEB_CONFIG_FILE: /etc/icmplb/web/web-config.yml", "- ./web:/etc/icmplb/web:ro"))
	file := composeAgent(t, c).env["ICMPLB_WEB_CONFIG_FILE"]
	host, ok := c["icmplb"].hostPath(file)
	if !filepath.IsAbs(file) || !ok || !sameFile(host, webConfigExample) {
		t.Fatalf("icmplb: ICMPLB_WEB_CONFIG_FILE=%q is not an absolute path mounted from %s (got %q)", file, webConfigExample, host)
	}
	var pc struct {
		ScrapeConfigs []struct {
			JobName   string `json:"job_name"`
			Scheme    string
			TLSConfig struct {
				CAFile string `json:"ca_file"`
			} `json:"tls_config"`
			BasicAuth struct {
				Username     string
				PasswordFile string `json:"password_file"`
			} `json:"basic_auth"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal(uncomment(t, promConfig, read(t, promConfig), "scheme: https", "tls_config:", "basic_auth:"), &pc); err != nil {
		t.Fatalf("%s uncommented: %v", promConfig, err)
	}
	for _, sc := range pc.ScrapeConfigs {
		if sc.JobName != "icmplb" {
			continue
		}
		expect(t, sc.Scheme == "https" && sc.BasicAuth.Username != "", "%s uncommented: job icmplb scheme %q, user %q; want https with basic auth", promConfig, sc.Scheme, sc.BasicAuth.Username)
		for _, f := range []string{sc.TLSConfig.CAFile, sc.BasicAuth.PasswordFile} {
			h, ok := c["prometheus"].hostPath(f)
			expect(t, ok && filepath.Dir(h) == filepath.Dir(host), "prometheus: %s is not mounted from %s (got %q)", f, filepath.Dir(webConfigExample), h)
		}
	}
}

// TestKubernetesWebConfig uncomments what daemonset.yaml says enables TLS and
// basic auth: ICMPLB_WEB_CONFIG_FILE must lie in the read-only mount of the
// Secret the comment tells to create, under the name it is created with.
func TestKubernetesWebConfig(t *testing.T) {
	data := read(t, daemonSetFile)
	expect(t, bytes.Contains(data, []byte("create secret generic "+webSecretName)), "%s: no `kubectl create secret generic %s` command", daemonSetFile, webSecretName)
	docs, err := decodeK8s(daemonSetFile+" uncommented", uncomment(t, daemonSetFile, data, "- name: ICMPLB_WEB_CONFIG_FILE", "- name: web-config"))
	if err != nil || len(docs) != 1 {
		t.Fatalf("%d documents, %v", len(docs), err)
	}
	for _, kc := range agentContainers(docs) {
		i := slices.IndexFunc(kc.c.Env, func(e corev1.EnvVar) bool { return e.Name == "ICMPLB_WEB_CONFIG_FILE" })
		if i < 0 || !filepath.IsAbs(kc.c.Env[i].Value) {
			t.Fatalf("%s: no absolute ICMPLB_WEB_CONFIG_FILE", kc)
		}
		file := kc.c.Env[i].Value
		expect(t, bytes.Contains(data, []byte("--from-file="+filepath.Base(file))), "%s: the Secret is not created with --from-file=%s", daemonSetFile, filepath.Base(file))
		expect(t, slices.ContainsFunc(kc.c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.MountPath == filepath.Dir(file) && m.ReadOnly && slices.ContainsFunc(kc.pod.Spec.Volumes, func(v corev1.Volume) bool {
				return v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == webSecretName
			})
		}), "%s: %s is not in a read-only mount of Secret %s", kc, file, webSecretName)
	}
}
