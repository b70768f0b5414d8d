package unsubscribe

import (
	"bytes"
	"context"
	"errors"
	"html"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// fakeUnsubscriber records the subjects it is called with and fails with
// err when set.
type fakeUnsubscriber struct {
	mu    sync.Mutex
	calls []Subject
	err   error
}

func (f *fakeUnsubscriber) Unsubscribe(_ context.Context, sub Subject) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, sub)
	return f.err
}

func (f *fakeUnsubscriber) take() []Subject {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

type env struct {
	t      *testing.T
	signer *Signer
	unsub  *fakeUnsubscriber
	srv    *httptest.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, signer: mustSigner(t, secret), unsub: &fakeUnsubscriber{}}
	e.srv = httptest.NewServer(Handler(e.signer, e.unsub))
	t.Cleanup(e.srv.Close)
	return e
}

type response struct {
	code   int
	header http.Header
	body   string
}

// do sends one request over the loopback listener, as a receiver would:
// no cookies, no authorization.
func (e *env) do(method, path, contentType string, body io.Reader) response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func (e *env) expectCalls(want ...Subject) {
	e.t.Helper()
	got := e.unsub.take()
	if len(got) != len(want) {
		e.t.Fatalf("Unsubscribe called %d times (%+v), want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			e.t.Errorf("Unsubscribe call %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func checkHeaders(t *testing.T, r response, contentType string) {
	t.Helper()
	for k, want := range map[string]string{
		"Content-Type":           contentType,
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"X-Frame-Options":        "DENY",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !strings.Contains(r.header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("Content-Security-Policy %q", r.header.Get("Content-Security-Policy"))
	}
	if c := r.header.Values("Set-Cookie"); len(c) > 0 {
		t.Errorf("response sets cookies %q", c)
	}
}

const oneClickBody = "List-Unsubscribe=One-Click"

func hostile() Subject {
	return Subject{Tenant: "acme", Address: `"<script>alert('x')</script>&"@example.com`, CampaignID: msgID, MessageID: msgID, Index: 3}
}

func TestGetConfirmsWithoutUnsubscribing(t *testing.T) {
	e := newEnv(t)
	sub := hostile()
	path := Path + e.signer.Token(sub)
	for range 3 { // link scanners fetch more than once
		r := e.do(http.MethodGet, path, "", nil)
		if r.code != http.StatusOK {
			t.Fatalf("GET: %d %s", r.code, r.body)
		}
		checkHeaders(t, r, "text/html; charset=utf-8")
		if strings.Contains(r.body, "<script>") || !strings.Contains(r.body, html.EscapeString(sub.Address)) {
			t.Errorf("the page does not show the address escaped:\n%s", r.body)
		}
		if !regexp.MustCompile(`(?s)<form method="post">.*<input type="hidden" name="List-Unsubscribe" value="One-Click">.*<button type="submit">`).MatchString(r.body) {
			t.Errorf("the page has no one-click POST form:\n%s", r.body)
		}
	}
	if r := e.do(http.MethodHead, path, "", nil); r.code != http.StatusOK || r.body != "" {
		t.Errorf("HEAD: %d %q", r.code, r.body)
	}
	e.expectCalls()
}

// TestConfirmationFormPosts submits the confirmation page's form as a
// browser would: the form's fields, form-urlencoded, to the page's own URL.
func TestConfirmationFormPosts(t *testing.T) {
	e := newEnv(t)
	sub := typical()
	path := Path + e.signer.Token(sub)
	page := e.do(http.MethodGet, path, "", nil)
	if regexp.MustCompile(`<form[^>]* action=`).MatchString(page.body) {
		t.Fatalf("the form has an action; it must post to the page's own URL:\n%s", page.body)
	}
	fields := regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]+)">`).FindAllStringSubmatch(page.body, -1)
	var form []string
	for _, f := range fields {
		form = append(form, html.UnescapeString(f[1])+"="+html.UnescapeString(f[2]))
	}
	r := e.do(http.MethodPost, path, "application/x-www-form-urlencoded", strings.NewReader(strings.Join(form, "&")))
	if r.code != http.StatusOK || !strings.Contains(r.body, "You are unsubscribed") || !strings.Contains(r.body, "alice@example.com") {
		t.Fatalf("POST of the form: %d\n%s", r.code, r.body)
	}
	checkHeaders(t, r, "text/html; charset=utf-8")
	e.expectCalls(sub)
}

func TestOneClickPost(t *testing.T) {
	e := newEnv(t)
	sub := hostile()
	tok := e.signer.Token(sub)

	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	if err := mw.WriteField("List-Unsubscribe", "One-Click"); err != nil {
		t.Fatal(err)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path, contentType, body string
	}{
		{"urlencoded", Path + tok, "application/x-www-form-urlencoded", oneClickBody},
		{"urlencoded with charset", Path + tok, "application/x-www-form-urlencoded; charset=utf-8", oneClickBody + "\r\n"},
		{"multipart", Path + tok, mw.FormDataContentType(), mp.String()},
		{"empty body", Path + tok, "", ""},
		{"no content type", Path + tok, "", oneClickBody},
		{"token in upper case", Path + strings.ToUpper(tok), "application/x-www-form-urlencoded", oneClickBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: a repeated POST is answered the same and passed on
			// again; the Unsubscriber is idempotent.
			for range 2 {
				r := e.do(http.MethodPost, tc.path, tc.contentType, strings.NewReader(tc.body))
				if r.code != http.StatusOK {
					t.Fatalf("POST: %d %s", r.code, r.body)
				}
				checkHeaders(t, r, "text/html; charset=utf-8")
				if strings.Contains(r.body, "<script>") {
					t.Errorf("the address is not escaped:\n%s", r.body)
				}
				e.expectCalls(sub)
			}
		})
	}
}

func TestPostRefusesOtherBodies(t *testing.T) {
	e := newEnv(t)
	path := Path + e.signer.Token(typical())

	var withFile bytes.Buffer
	mw := multipart.NewWriter(&withFile)
	_ = mw.WriteField("List-Unsubscribe", "One-Click")
	fw, _ := mw.CreateFormFile("f", "f.txt")
	_, _ = fw.Write([]byte("data"))
	_ = mw.Close()

	for _, tc := range []struct{ name, contentType, body string }{
		{"other value", "application/x-www-form-urlencoded", "List-Unsubscribe=Later"},
		{"two values", "application/x-www-form-urlencoded", oneClickBody + "&" + oneClickBody},
		{"other field", "application/x-www-form-urlencoded", "foo=bar"},
		{"bad escape", "application/x-www-form-urlencoded", "List-Unsubscribe=%zz"},
		{"json", "application/json", `{"List-Unsubscribe":"One-Click"}`},
		{"multipart without boundary", "multipart/form-data", oneClickBody},
		{"broken multipart", "multipart/form-data; boundary=xyz", oneClickBody},
		{"multipart with a file", mw.FormDataContentType(), withFile.String()},
	} {
		r := e.do(http.MethodPost, path, tc.contentType, strings.NewReader(tc.body))
		if r.code != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", tc.name, r.code, r.body)
		}
		checkHeaders(t, r, "text/plain; charset=utf-8")
	}
	e.expectCalls()
}

func TestOversizedBody(t *testing.T) {
	e := newEnv(t)
	path := Path + e.signer.Token(typical())
	big := oneClickBody + "&pad=" + strings.Repeat("x", MaxBodyBytes)
	// With a Content-Length, and chunked (a reader of unknown length).
	for _, body := range []io.Reader{strings.NewReader(big), io.MultiReader(strings.NewReader(big))} {
		r := e.do(http.MethodPost, path, "application/x-www-form-urlencoded", body)
		if r.code != http.StatusRequestEntityTooLarge {
			t.Errorf("%d-byte body: %d %s, want 413", len(big), r.code, r.body)
		}
	}
	// A body of exactly MaxBodyBytes is read: the one-click form padded
	// with trailing white space, which the form reading trims.
	within := oneClickBody + strings.Repeat(" ", MaxBodyBytes-len(oneClickBody))
	if r := e.do(http.MethodPost, path, "application/x-www-form-urlencoded", strings.NewReader(within)); r.code != http.StatusOK {
		t.Errorf("%d-byte body: %d %s, want 200", len(within), r.code, r.body)
	}
	e.expectCalls(typical())
}

func TestInvalidToken(t *testing.T) {
	e := newEnv(t)
	tok := e.signer.Token(typical())
	flip := "a"
	if tok[10] == 'a' {
		flip = "b"
	}
	other := mustSigner(t, otherSecret)
	for _, path := range []string{
		Path + tok[:10] + flip + tok[11:],
		Path + tok[:len(tok)-1],
		Path + other.Token(typical()),
		Path + e.signer.MailtoToken(msgID, 7),
		Path + "not-a-token",
		Path + strings.Repeat("a", MaxTokenLen+1),
		Path,
		Path + tok + "/x",
		"/",
		"/x/" + tok,
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			r := e.do(method, path, "application/x-www-form-urlencoded", strings.NewReader(oneClickBody))
			if r.code != http.StatusNotFound {
				t.Errorf("%s %s: %d, want 404", method, path, r.code)
			}
			if strings.Contains(r.body, "token") || strings.Contains(r.body, "alice") {
				t.Errorf("%s %s: the 404 gives detail: %q", method, path, r.body)
			}
			if r.header.Get("Cache-Control") != "no-store" {
				t.Errorf("%s %s: Cache-Control %q", method, path, r.header.Get("Cache-Control"))
			}
		}
	}
	e.expectCalls()
}

func TestUnsubscriberFailure(t *testing.T) {
	e := newEnv(t)
	e.unsub.err = errors.New("store down")
	r := e.do(http.MethodPost, Path+e.signer.Token(typical()), "application/x-www-form-urlencoded", strings.NewReader(oneClickBody))
	if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("POST with the store down: %d, Retry-After %q", r.code, r.header.Get("Retry-After"))
	}
	if strings.Contains(r.body, "store down") {
		t.Errorf("the 503 reveals the error: %q", r.body)
	}
	checkHeaders(t, r, "text/plain; charset=utf-8")
	e.expectCalls(typical())
}

func TestOtherMethods(t *testing.T) {
	e := newEnv(t)
	path := Path + e.signer.Token(typical())
	for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch} {
		if r := e.do(m, path, "application/x-www-form-urlencoded", strings.NewReader(oneClickBody)); r.code != http.StatusMethodNotAllowed {
			t.Errorf("%s: %d, want 405", m, r.code)
		}
	}
	e.expectCalls()
}

// TestHeadersToHandler follows a message's List-Unsubscribe to the
// listener as an RFC 8058 receiver does: it takes the https URI and POSTs
// the List-Unsubscribe-Post value to it, here with the handler mounted
// under a base path.
func TestHeadersToHandler(t *testing.T) {
	signer := mustSigner(t, secret)
	unsub := &fakeUnsubscriber{}
	mux := http.NewServeMux()
	mux.Handle("/mail/", http.StripPrefix("/mail", Handler(signer, unsub)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	links, err := NewLinks(signer, srv.URL+"/mail", "bounces.example.net", Options{AllowHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	sub := typical()
	lu, lup, err := links.Headers(sub)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`<(http://[^>]+)>`).FindStringSubmatch(lu)
	if m == nil {
		t.Fatalf("no http URI in %q", lu)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, m[1], strings.NewReader(lup))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d", m[1], resp.StatusCode)
	}
	if got := unsub.take(); len(got) != 1 || got[0] != sub {
		t.Errorf("Unsubscribe calls %+v, want one with %+v", got, sub)
	}
}
