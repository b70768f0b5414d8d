package unsubscribe

import (
	"bytes"
	"context"
	"errors"
	"html/template"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
)

// Unsubscriber carries out an unsubscription.
//
// Unsubscribe puts sub.Address on sub.Tenant's suppression list with reason
// unsubscribe and records an unsubscribe event for sub.MessageID and
// sub.Index. It must be idempotent: the same subject comes again when a
// receiver retries or the recipient clicks twice. A nil error means the
// address is suppressed; any error makes Handler answer 503, so the
// sender of the POST may retry. It logs its own failures, which Handler
// does not see the detail of.
type Unsubscriber interface {
	Unsubscribe(ctx context.Context, sub Subject) error
}

// MaxBodyBytes bounds a POST body. RFC 8058's body is 26 octets, or a few
// hundred as multipart/form-data; anything much larger is not a one-click
// request.
const MaxBodyBytes = 8 << 10

// retryAfter is the Retry-After of a 503, in seconds.
const retryAfter = "60"

// Handler serves the one-click endpoint at Path + "{token}", relative to
// the root of the handler (mount it with http.StripPrefix when the base URL
// has a path):
//
//   - GET (and HEAD) answers 200 with a confirmation page showing the
//     address and a form that POSTs List-Unsubscribe=One-Click back to the
//     same URL. It never unsubscribes: link scanners fetch URLs.
//   - POST with the body List-Unsubscribe=One-Click as
//     application/x-www-form-urlencoded or multipart/form-data (RFC 8058
//     §3.2), or with an empty body, calls u.Unsubscribe once and answers 200
//     with a short page once it succeeded, 503 (Retry-After) when it failed.
//     A body that is present but is not that form answers 400; one over
//     MaxBodyBytes answers 413. No cookie, authorization or other state is
//     read or set: the token is the whole request.
//   - A token that does not verify answers 404 with no detail, for either
//     method; another method answers 405.
//
// Every response has Cache-Control: no-store (a page naming an address must
// not be cached), X-Content-Type-Options: nosniff, Referrer-Policy:
// no-referrer (the URL carries the token), and a Content-Security-Policy
// and X-Frame-Options that forbid scripts and framing (a framed page could
// trick a click into an unsubscription).
func Handler(s *Signer, u Unsubscriber) http.Handler {
	h := &handler{signer: s, unsub: u}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path+"{token}", h.get)
	mux.HandleFunc("POST "+Path+"{token}", h.post)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		mux.ServeHTTP(w, r)
	})
}

type handler struct {
	signer *Signer
	unsub  Unsubscriber
}

var pages = template.Must(template.New("").Parse(`
{{- define "head"}}<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{{.}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;line-height:1.5}button{font-size:1em;padding:.5em 1.5em}</style>
</head>
<body>
{{end}}
{{- define "confirm"}}{{template "head" "Unsubscribe"}}<h1>Unsubscribe</h1>
<p>Stop sending email from this sender to <strong>{{.Address}}</strong>?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
</body>
</html>
{{end}}
{{- define "done"}}{{template "head" "Unsubscribed"}}<h1>You are unsubscribed</h1>
<p><strong>{{.Address}}</strong> will receive no more email from this sender.</p>
</body>
</html>
{{end}}`))

// subject parses the request's token, answering 404 when it does not
// verify.
func (h *handler) subject(w http.ResponseWriter, r *http.Request) (Subject, bool) {
	sub, err := h.signer.Parse(r.PathValue("token"))
	if err != nil {
		plain(w, http.StatusNotFound, "Not found.")
		return Subject{}, false
	}
	return sub, true
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	sub, ok := h.subject(w, r)
	if !ok {
		return
	}
	page(w, "confirm", sub)
}

func (h *handler) post(w http.ResponseWriter, r *http.Request) {
	sub, ok := h.subject(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
			plain(w, http.StatusRequestEntityTooLarge, "Request too large.")
			return
		}
		plain(w, http.StatusBadRequest, "Bad request.")
		return
	}
	if !oneClick(r.Header.Get("Content-Type"), body) {
		plain(w, http.StatusBadRequest, "Bad request.")
		return
	}
	if err := h.unsub.Unsubscribe(r.Context(), sub); err != nil {
		w.Header().Set("Retry-After", retryAfter)
		plain(w, http.StatusServiceUnavailable, "Temporarily unavailable; please try again later.")
		return
	}
	page(w, "done", sub)
}

// oneClick reports whether body is a one-click request: empty (a bare POST
// to the signed URL is as deliberate as one with the form), or a form whose
// only List-Unsubscribe value is One-Click. The form may be
// multipart/form-data (RFC 8058 §3.2's SHOULD) or form-urlencoded (its
// MAY); a body without a form media type is read as form-urlencoded, for
// clients that omit the Content-Type.
func oneClick(contentType string, body []byte) bool {
	if len(bytes.TrimSpace(body)) == 0 {
		return true
	}
	var form url.Values
	mt, params, _ := mime.ParseMediaType(contentType)
	switch mt {
	case "multipart/form-data":
		if params["boundary"] == "" {
			return false
		}
		f, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).ReadForm(MaxBodyBytes)
		if err != nil {
			return false
		}
		defer func() { _ = f.RemoveAll() }()
		if len(f.File) > 0 {
			return false
		}
		form = f.Value
	default:
		v, err := url.ParseQuery(strings.TrimSpace(string(body)))
		if err != nil {
			return false
		}
		form = v
	}
	vs := form["List-Unsubscribe"]
	return len(vs) == 1 && strings.EqualFold(strings.TrimSpace(vs[0]), "One-Click")
}

func page(w http.ResponseWriter, name string, sub Subject) {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, sub); err != nil {
		plain(w, http.StatusInternalServerError, "Internal error.")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes()) // the client went away; nothing to do
}

func plain(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}
