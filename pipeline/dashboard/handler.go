package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"time"

	"github.com/go-logr/logr"
)

// Handler serves the dashboard of the loops a Source knows.
type Handler struct {
	src Source
	log logr.Logger
	mux *http.ServeMux
}

// New returns the dashboard's handler. Every request reads the views afresh.
func New(src Source, log logr.Logger) *Handler {
	h := &Handler{src: src, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /{$}", h.index)
	h.mux.HandleFunc("GET /loops/{namespace}/{name}", h.loop)
	h.mux.HandleFunc("GET /api/loops/{namespace}/{name}", h.api)
	return h
}

// ServeHTTP serves the routes of the package documentation.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	h.mux.ServeHTTP(w, r)
}

// securityHeaders: everything is inline, so refuse any load from elsewhere, scripts
// included; forms post only back here.
func securityHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
}

// LoginPath is where Login's form posts a bearer token, for a wrapper that
// authenticates the dashboard's readers to serve.
const LoginPath = "/login"

// Login writes the sign-in page with status: a form that posts a bearer token to
// LoginPath, and message above it. The dashboard itself knows nothing of tokens; the
// wrapper that checks them serves this page to a browser that has none.
func Login(w http.ResponseWriter, status int, message string) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, "login", struct{ Message, Action string }{message, LoginPath}); err != nil {
		http.Error(w, "rendering the sign-in page", http.StatusInternalServerError)
		return
	}
	securityHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

const queryTimeout = 30 * time.Second

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	loops, err := h.src.Loops(ctx)
	if err != nil {
		h.fail(w, http.StatusBadGateway, "listing loops", err)
		return
	}
	h.render(w, "index", struct{ Loops []LoopRef }{loops})
}

func (h *Handler) figures(w http.ResponseWriter, r *http.Request) (*Figures, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	ref := LoopRef{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
	l, err := h.src.Open(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		h.fail(w, http.StatusNotFound, "loop "+ref.String(), err)
		return nil, false
	}
	if err != nil {
		h.fail(w, http.StatusBadGateway, "opening loop "+ref.String(), err)
		return nil, false
	}
	if l.Release != nil {
		defer l.Release()
	}
	f, err := Load(ctx, ref, l)
	if err != nil {
		h.fail(w, http.StatusBadGateway, "reading the feedback views of "+ref.String(), err)
		return nil, false
	}
	return f, true
}

func (h *Handler) loop(w http.ResponseWriter, r *http.Request) {
	if f, ok := h.figures(w, r); ok {
		h.render(w, "loop", newLoopPage(f))
	}
}

func (h *Handler) api(w http.ResponseWriter, r *http.Request) {
	f, ok := h.figures(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(f)
}

func (h *Handler) fail(w http.ResponseWriter, status int, what string, err error) {
	h.log.Error(err, "dashboard request failed", "what", what)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = pages.ExecuteTemplate(w, "error", struct{ What, Error string }{what, err.Error()})
}

// render executes into a buffer first, so that a template error cannot leave half a page.
func (h *Handler) render(w http.ResponseWriter, name string, data any) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		h.fail(w, http.StatusInternalServerError, "rendering "+name, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

var pages = template.Must(template.New("pages").Funcs(template.FuncMap{
	"qty": qty, "qtyp": qtyPtr, "pct": pct, "date": dateLabel, "num": ftoa,
}).Parse(pageTemplates + customerTemplate))
