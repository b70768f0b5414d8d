package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/postflow/postflow/pkg/testenv"
)

func pemBytes(t testing.TB, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("MarshalPKCS8PrivateKey: %v", err)
	}
	return pemBytes(t, "PRIVATE KEY", der)
}

func TestLoadKeys(t *testing.T) {
	t.Parallel()
	ks := keySet(t)
	dir := t.TempDir()

	files := map[string][]byte{
		// good
		"rsa1._domainkey.example.com.pem": pemBytes(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(ks.rsa)),
		"rsa8._domainkey.example.org.pem": pkcs8(t, ks.rsa2),
		"ed1._domainkey.Example.COM.pem":  pkcs8(t, ks.ed),
		// bad
		"weak._domainkey.example.com.pem":    pkcs8(t, ks.rsaWeak),
		"garbage._domainkey.example.com.pem": []byte("this is not a key\n"),
		"example.com.pem":                    pkcs8(t, ks.ed2),
		"ed2.example.com.pem":                pkcs8(t, ks.ed2),
		"s_1._domainkey.example.com.pem":     pkcs8(t, ks.ed2),
		"ec._domainkey.example.com.pem":      pkcs8(t, ks.ec),
		"enc._domainkey.example.com.pem":     pemBytes(t, "ENCRYPTED PRIVATE KEY", []byte("opaque ciphertext")),
		"two._domainkey.example.com.pem":     append(pkcs8(t, ks.ed2), pkcs8(t, ks.rsa2)...),
		"README":                             []byte("keys live here\n"),
		// skipped
		".hidden": []byte("ignored"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A Kubernetes Secret volume: a "..data" link to a timestamped directory.
	if err := os.Mkdir(filepath.Join(dir, "..2026_03_02"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..2026_03_02", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "archive"), 0o700); err != nil {
		t.Fatal(err)
	}

	keys, err := LoadKeys(dir)

	type loaded struct {
		domain, selector string
		pub              crypto.PublicKey
	}
	want := []loaded{
		{"example.com", "ed1", ks.ed.Public()},
		{"example.com", "rsa1", ks.rsa.Public()},
		{"example.org", "rsa8", ks.rsa2.Public()},
	}
	if len(keys) != len(want) {
		t.Fatalf("LoadKeys loaded %v, want %d keys", keys, len(want))
	}
	for i, w := range want {
		k := keys[i]
		pub, ok := k.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
		if k.Domain != w.domain || k.Selector != w.selector || !ok || !pub.Equal(w.pub) {
			t.Errorf("key %d = %v, want %s._domainkey.%s with the key written", i, k, w.selector, w.domain)
		}
	}

	wantBad := map[string]error{
		"weak._domainkey.example.com.pem":    ErrKeySize,
		"garbage._domainkey.example.com.pem": ErrKeyFormat,
		"example.com.pem":                    ErrFileName,
		"ed2.example.com.pem":                ErrFileName,
		"s_1._domainkey.example.com.pem":     ErrFileName,
		"ec._domainkey.example.com.pem":      ErrKeyType,
		"enc._domainkey.example.com.pem":     ErrKeyFormat,
		"two._domainkey.example.com.pem":     ErrKeyFormat,
		"README":                             ErrFileName,
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("LoadKeys error = %v, want a joined error", err)
	}
	gotBad := make(map[string]error)
	for _, e := range joined.Unwrap() {
		var fe *FileError
		if !errors.As(e, &fe) {
			t.Errorf("joined error %v is not a *FileError", e)
			continue
		}
		gotBad[filepath.Base(fe.Path)] = fe
	}
	for name, sentinel := range wantBad {
		got, ok := gotBad[name]
		switch {
		case !ok:
			t.Errorf("LoadKeys error does not report %s:\n%v", name, err)
		case !errors.Is(got, sentinel):
			t.Errorf("error for %s = %v, want it to wrap %v", name, got, sentinel)
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("LoadKeys error text does not name %s", name)
		}
	}
	for name := range gotBad {
		if _, ok := wantBad[name]; !ok {
			t.Errorf("LoadKeys reported %s, which should load or be skipped: %v", name, gotBad[name])
		}
	}

	// No PEM armour, and no 16-character run of any file's base64, may
	// appear in the error text.
	text := err.Error()
	if strings.Contains(text, "-----") || strings.Contains(text, "PRIVATE KEY") {
		t.Errorf("LoadKeys error text contains PEM armour:\n%s", text)
	}
	for name, data := range files {
		for line := range strings.SplitSeq(string(data), "\n") {
			if strings.HasPrefix(line, "-----") {
				continue
			}
			for i := 0; i+16 <= len(line); i++ {
				if strings.Contains(text, line[i:i+16]) {
					t.Fatalf("LoadKeys error text contains data of %s: %q", name, line[i:i+16])
				}
			}
		}
	}

	// The loaded keys sign mail that verifies against their DNS records.
	signer, err := NewSigner(keys)
	if err != nil {
		t.Fatalf("NewSigner(loaded keys): %v", err)
	}
	srv := testenv.StartDNS(t, zoneFor(t, keys))
	out, err := signer.Sign([]byte(baseMsg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	vs := verify(t, out, dnsLookupTXT(srv.Addr()))
	if len(vs) != 2 {
		t.Fatalf("got %d verifications with loaded keys, want 2", len(vs))
	}
	for i, v := range vs {
		if v.Err != nil {
			t.Errorf("verification %d with loaded keys: %v", i, v.Err)
		}
	}
}

func TestLoadKeysEmptyAndMissingDir(t *testing.T) {
	t.Parallel()
	keys, err := LoadKeys(t.TempDir())
	if err != nil || len(keys) != 0 {
		t.Errorf("LoadKeys(empty dir) = %v, %v; want no keys, nil", keys, err)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if keys, err := LoadKeys(missing); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadKeys(%s) = %v, %v; want an error wrapping os.ErrNotExist", missing, keys, err)
	}
}

// decimalList renders b the way fmt's %v prints a byte slice, without brackets.
func decimalList(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = strconv.Itoa(int(c))
	}
	return strings.Join(parts, " ")
}

// TestKeyNeverPrintsMaterial formats keys every way a log line or error
// might and looks for the private key in the output.
func TestKeyNeverPrintsMaterial(t *testing.T) {
	t.Parallel()
	ks := keySet(t)
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"r._domainkey.example.com.pem": pkcs8(t, ks.rsa),
		"e._domainkey.example.com.pem": pkcs8(t, ks.ed),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	loadedKeys, err := LoadKeys(dir)
	if err != nil {
		t.Fatalf("LoadKeys: %v", err)
	}
	rawKeys := []Key{{"example.com", "r", ks.rsa}, {"example.com", "e", ks.ed}}
	signer, err := NewSigner(rawKeys)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}

	der8, _ := x509.MarshalPKCS8PrivateKey(ks.rsa)
	secrets := []string{
		ks.rsa.D.String(),
		ks.rsa.D.Text(16),
		ks.rsa.Primes[0].String(),
		hex.EncodeToString(ks.rsa.D.Bytes()),
		base64.StdEncoding.EncodeToString(der8)[40:80],
		hex.EncodeToString(ks.ed.Seed()),
		decimalList(ks.ed.Seed()[:8]), // how fmt prints a []byte field
		base64.StdEncoding.EncodeToString(ks.ed.Seed()),
	}

	type holder struct{ keys []Key } // unexported: fmt reflects without methods
	type exported struct{ Keys []Key }
	var logBuf bytes.Buffer
	jsonLog := slog.New(slog.NewJSONHandler(&logBuf, nil))
	textLog := slog.New(slog.NewTextHandler(&logBuf, nil))

	var outputs []string
	for _, k := range loadedKeys {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x", "%q"} {
			outputs = append(outputs,
				fmt.Sprintf(verb, k), fmt.Sprintf(verb, k.Signer), fmt.Sprintf(verb, loadedKeys),
				fmt.Sprintf(verb, holder{loadedKeys}), fmt.Sprintf(verb, exported{loadedKeys}), fmt.Sprintf(verb, signer))
		}
		j1, _ := json.Marshal(k)
		j2, _ := json.Marshal(exported{loadedKeys})
		j3, _ := json.Marshal(k.Signer)
		outputs = append(outputs, string(j1), string(j2), string(j3), k.String())
		jsonLog.Info("key", "key", k, "signer", k.Signer, "all", loadedKeys)
		textLog.Info("key", "key", k, "signer", k.Signer, "all", loadedKeys)
	}
	outputs = append(outputs, logBuf.String())

	for _, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("formatted key output contains private key material %.20q…:\n%s", s, out)
			}
		}
	}
	wantStr := []struct {
		key  Key
		want string
	}{
		{loadedKeys[0], "e._domainkey.example.com (ed25519)"},
		{loadedKeys[1], "r._domainkey.example.com (rsa-2048)"},
	}
	for _, w := range wantStr {
		if got := fmt.Sprint(w.key); got != w.want {
			t.Errorf("fmt.Sprint(key) = %q, want %q", got, w.want)
		}
	}
	if !slices.ContainsFunc(outputs, func(s string) bool { return strings.Contains(s, `"selector":"r"`) }) {
		t.Errorf("JSON forms do not show the selector")
	}
	// Keys from LoadKeys sign through the wrapper.
	if _, ok := loadedKeys[1].Signer.Public().(*rsa.PublicKey); !ok {
		t.Errorf("wrapped RSA signer's Public() = %T", loadedKeys[1].Signer.Public())
	}
	if _, ok := loadedKeys[0].Signer.Public().(ed25519.PublicKey); !ok {
		t.Errorf("wrapped Ed25519 signer's Public() = %T", loadedKeys[0].Signer.Public())
	}
}
