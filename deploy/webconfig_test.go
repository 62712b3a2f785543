// SPDX-License-Identifier: MIT

package deploy

// The deployment kit's endpoint security: the example web config file, and
// the commented settings that enable it in compose and Kubernetes, which a
// user only has to uncomment.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

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
	example, err := os.ReadFile(webConfigExample)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(example, []byte(webPlaceholder)) {
		t.Fatalf("%s: no placeholder %s", webConfigExample, webPlaceholder)
	}
	dir := t.TempDir()
	cert := webtest.SelfSigned(t, dir, "host.docker.internal", "127.0.0.1")
	// The example names the files as `kubectl create secret tls` does.
	for from, to := range map[string]string{cert.CertFile: "tls.crt", cert.KeyFile: "tls.key"} {
		if err := os.Rename(from, filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	asIs := filepath.Join(dir, "as-is.yml")
	if err := os.WriteFile(asIs, example, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := exporter.ValidateWebConfigFile(asIs); err == nil {
		t.Errorf("%s with its placeholder hash: accepted, want refused", webConfigExample)
	}
	// A real hash, as htpasswd -nBC 12 prints it.
	hashed := webtest.WriteConfig(t, t.TempDir(), nil, map[string]string{"u": "p"}, "")
	hashLine, _ := os.ReadFile(hashed)
	_, hash, _ := strings.Cut(strings.TrimSpace(string(hashLine)), "u: ")
	filled := filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(filled, bytes.ReplaceAll(example, []byte(webPlaceholder), []byte(hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := exporter.ValidateWebConfigFile(filled); err != nil {
		t.Errorf("%s filled in: %v", webConfigExample, err)
	}
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
		if found == 0 {
			t.Errorf("%s: no commented line %q to uncomment", file, start)
		}
	}
	return []byte(strings.Join(lines, "\n"))
}

// TestComposeWebConfig uncomments what compose.yaml says enables TLS and
// basic auth: the agent must find the example config, and Prometheus the CA
// and password files, in the same mounted directory.
func TestComposeWebConfig(t *testing.T) {
	data, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	c := loadComposeData(t, uncomment(t, composeFile, data,
		"ICMPLB_WEB_CONFIG_FILE: /etc/icmplb/web/web-config.yml", "- ./web:/etc/icmplb/web:ro"))
	a := composeAgent(t, c)
	file := a.env["ICMPLB_WEB_CONFIG_FILE"]
	if !filepath.IsAbs(file) {
		t.Fatalf("ICMPLB_WEB_CONFIG_FILE=%q: not an absolute path", file)
	}
	host, ok := c.Services["icmplb"].hostPath(file)
	if !ok || !sameFile(t, host, webConfigExample) {
		t.Fatalf("icmplb: ICMPLB_WEB_CONFIG_FILE=%s is not mounted from %s (got %q)", file, webConfigExample, host)
	}

	pdata, err := os.ReadFile(promConfig)
	if err != nil {
		t.Fatal(err)
	}
	var pc struct {
		ScrapeConfigs []struct {
			JobName   string `yaml:"job_name"`
			Scheme    string `yaml:"scheme"`
			TLSConfig struct {
				CAFile string `yaml:"ca_file"`
			} `yaml:"tls_config"`
			BasicAuth struct {
				Username     string `yaml:"username"`
				PasswordFile string `yaml:"password_file"`
			} `yaml:"basic_auth"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(uncomment(t, promConfig, pdata, "scheme: https", "tls_config:", "basic_auth:"), &pc); err != nil {
		t.Fatalf("%s uncommented: %v", promConfig, err)
	}
	prom := c.Services["prometheus"]
	for _, sc := range pc.ScrapeConfigs {
		if sc.JobName != "icmplb" {
			continue
		}
		if sc.Scheme != "https" || sc.BasicAuth.Username == "" {
			t.Errorf("%s uncommented: job icmplb scheme %q, user %q; want https with basic auth", promConfig, sc.Scheme, sc.BasicAuth.Username)
		}
		for _, f := range []string{sc.TLSConfig.CAFile, sc.BasicAuth.PasswordFile} {
			if h, ok := prom.hostPath(f); !ok || filepath.Clean(filepath.Dir(h)) != filepath.Clean(filepath.Dir(host)) {
				t.Errorf("prometheus: %s is not mounted from %s (got %q)", f, filepath.Dir(webConfigExample), h)
			}
		}
	}
}

// TestKubernetesWebConfig uncomments what daemonset.yaml says enables TLS and
// basic auth: ICMPLB_WEB_CONFIG_FILE must lie in the read-only mount of the
// Secret the comment tells to create, under the name it is created with.
func TestKubernetesWebConfig(t *testing.T) {
	data, err := os.ReadFile(daemonSetFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("create secret generic "+webSecretName)) {
		t.Errorf("%s: no `kubectl create secret generic %s` command", daemonSetFile, webSecretName)
	}
	docs, err := decodeAll(uncomment(t, daemonSetFile, data,
		"- name: ICMPLB_WEB_CONFIG_FILE", "- name: web-config"))
	if err != nil || len(docs) != 1 {
		t.Fatalf("%s uncommented: %d documents, %v", daemonSetFile, len(docs), err)
	}
	obj, err := decodeK8s(docs[0])
	if err != nil {
		t.Fatal(err)
	}
	ps := obj.podSpec()
	for _, c := range ps.Containers {
		if !isAgentImage(c.Image) {
			continue
		}
		file := ""
		for _, e := range c.Env {
			if e.Name == "ICMPLB_WEB_CONFIG_FILE" {
				file = e.Value
			}
		}
		if !filepath.IsAbs(file) {
			t.Fatalf("ICMPLB_WEB_CONFIG_FILE=%q: not an absolute path", file)
		}
		if !bytes.Contains(data, []byte("--from-file="+filepath.Base(file))) {
			t.Errorf("%s: the Secret is not created with --from-file=%s", daemonSetFile, filepath.Base(file))
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			if m.MountPath != filepath.Dir(file) {
				continue
			}
			for _, v := range ps.Volumes {
				if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == webSecretName && m.ReadOnly {
					mounted = true
				}
			}
		}
		if !mounted {
			t.Errorf("%s uncommented: %s is not in a read-only mount of Secret %s", daemonSetFile, file, webSecretName)
		}
	}
}
