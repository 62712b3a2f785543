// SPDX-License-Identifier: MIT

package otlptest

import (
	"compress/gzip"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/icmplb/icmplb/internal/testenv"
)

const (
	tracesPath   = "/v1/traces"
	protobufType = "application/x-protobuf"
	// maxBody bounds a request body after decompression, so a runaway
	// exporter fails the export instead of exhausting the test's memory.
	maxBody = 64 << 20
)

// NewHTTP starts an OTLP/HTTP receiver (POST /v1/traces, protobuf, plain or
// gzip) on 127.0.0.1 and stops it when the test ends.
func NewHTTP(t testenv.TB) *Receiver {
	t.Helper()
	r := newReceiver()
	mux := http.NewServeMux()
	mux.HandleFunc(tracesPath, r.serveHTTP)
	// httptest listens on 127.0.0.1:0, as the gRPC receiver does.
	srv := httptest.NewServer(mux)
	r.endpoint = srv.URL
	t.Cleanup(srv.Close)
	return r
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "OTLP/HTTP wants POST", http.StatusMethodNotAllowed)
		return
	}
	if ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); ct != protobufType {
		http.Error(w, "otlptest accepts only "+protobufType, http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader = req.Body
	switch enc := strings.ToLower(strings.TrimSpace(req.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, "bad gzip body: "+err.Error(), http.StatusBadRequest)
			return
		}
		defer zr.Close()
		body = zr
	default:
		http.Error(w, "unsupported Content-Encoding "+enc, http.StatusUnsupportedMediaType)
		return
	}
	b, err := io.ReadAll(io.LimitReader(body, maxBody+1))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(b) > maxBody {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &msg); err != nil {
		http.Error(w, "bad ExportTraceServiceRequest: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg)

	resp, err := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", protobufType)
	w.WriteHeader(http.StatusOK)
	w.Write(resp)
}
