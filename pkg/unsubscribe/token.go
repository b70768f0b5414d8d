package unsubscribe

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
)

// Subject is what a token names: one recipient of one message.
type Subject struct {
	// Tenant owns the suppression list the address goes on.
	Tenant string
	// Address is the recipient, as it was sent to.
	Address string
	// CampaignID is the campaign the message belongs to; it may be empty.
	CampaignID string
	// MessageID is the message (the campaign id for campaign messages),
	// named by the unsubscribe event.
	MessageID string
	// Index is the recipient's index within the message.
	Index int
}

// ErrInvalid is returned for a token that is malformed, was altered, or
// was made with a secret the Signer does not hold. Callers must not tell
// these cases apart to the client: a 404 says all there is to say.
var ErrInvalid = errors.New("unsubscribe: invalid token")

const (
	// MinSecret is the shortest secret NewSigner accepts, in bytes.
	MinSecret = 16

	// MaxTokenLen bounds the tokens Parse accepts, in characters, so that a
	// hostile URL costs no more than a bounded decode and MAC. A subject
	// with a typical address makes a token of about 100 characters; Headers
	// refuses a subject whose token would be longer than MaxTokenLen.
	MaxTokenLen = 700

	// MaxMailtoTokenLen is the longest token MailtoToken returns: 58
	// characters, so that MailtoPrefix and the token fit the 64 octets of a
	// local part (RFC 5321 §4.5.3.1.1).
	MaxMailtoTokenLen = 58

	// MailtoPrefix starts the local part of the mailto address; the rest of
	// the local part is a MailtoToken.
	MailtoPrefix = "u+"

	// tokenVersion is the first byte of every token payload; a new layout
	// takes a new version, and Parse refuses versions it does not know.
	tokenVersion = 1

	// tokenMACBytes is the truncated HMAC in a token: 128 bits, which leaves
	// nothing to guess by POSTing to the listener.
	tokenMACBytes = 16
	// mailtoMACBytes is the truncated HMAC in a mailto token: 96 bits, as
	// long as fits the local part with the longest index.
	mailtoMACBytes = 12

	// messageIDLen and packedIDBytes describe the message ids the API makes:
	// 24 characters of [a-z2-7], the lower-case base32 form of 15 bytes.
	messageIDLen  = 24
	packedIDBytes = 15

	// Id kinds in a token payload.
	idRaw           = 0 // uvarint length, then the bytes
	idPacked        = 1 // a message-id-shaped string as its 15 bytes
	idSameAsMessage = 2 // the campaign id equals the message id

	// MAC labels: distinct and prefix-free, so that a token of one kind never
	// verifies as another, nor as a VERP return path made with the same
	// secret.
	tokenLabel  = "postflow-unsubscribe-v1\x00"
	mailtoLabel = "postflow-unsubscribe-mailto-v1\x00"
)

// encoding is lower-case base32 without padding: safe in a URL path and in
// a dot-atom local part, and unharmed by relays that fold case once Parse
// lower-cases its input.
var encoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Signer makes and checks tokens. It is safe for concurrent use.
type Signer struct {
	keys [][]byte // keys[0] signs; every key verifies
}

// NewSigner returns a Signer keyed with secret, which must be at least
// MinSecret bytes of high entropy and shared by every process that makes or
// checks tokens. Tokens made with any of previous also verify, so that a
// secret can be replaced without breaking the links in mail already sent;
// new tokens are always made with secret.
func NewSigner(secret []byte, previous ...[]byte) (*Signer, error) {
	s := &Signer{}
	for i, k := range append([][]byte{secret}, previous...) {
		if len(k) < MinSecret {
			return nil, fmt.Errorf("unsubscribe: secret %d is %d bytes, at least %d required", i, len(k), MinSecret)
		}
		s.keys = append(s.keys, append([]byte(nil), k...))
	}
	return s, nil
}

func mac(key []byte, label string, payload []byte, n int) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(label))
	h.Write(payload)
	return h.Sum(nil)[:n]
}

// verify reports whether sum is payload's MAC under one of the keys, in
// time independent of where a wrong sum differs.
func (s *Signer) verify(label string, payload, sum []byte) bool {
	ok := false
	for _, k := range s.keys {
		if hmac.Equal(sum, mac(k, label, payload, len(sum))) {
			ok = true
		}
	}
	return ok
}

// decode lower-cases token and decodes it, refusing non-canonical forms:
// base32 without padding can spell the same bytes with different trailing
// bits, and a token must not have two spellings that both verify.
func decode(token string, maxLen int) ([]byte, bool) {
	if token == "" || len(token) > maxLen {
		return nil, false
	}
	token = strings.ToLower(token)
	b, err := encoding.DecodeString(token)
	if err != nil || encoding.EncodeToString(b) != token {
		return nil, false
	}
	return b, true
}

// packID returns the 15 bytes a message-id-shaped string encodes.
func packID(id string) ([]byte, bool) {
	if len(id) != messageIDLen {
		return nil, false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return nil, false
		}
	}
	b, err := encoding.DecodeString(id)
	if err != nil || len(b) != packedIDBytes {
		return nil, false
	}
	return b, true
}

// Token returns the token naming sub, to go in the https URI:
//
//	base32(payload || HMAC-SHA256(secret, label || payload)[:16])
//	payload = 0x01 (version)
//	          zigzag varint Index
//	          uvarint len, Tenant
//	          uvarint len, Address
//	          MessageID as an id
//	          CampaignID as an id
//	id      = 0x00, uvarint len, bytes      (any string)
//	        | 0x01, 15 bytes                (24 characters of [a-z2-7])
//	        | 0x02                          (CampaignID equal to MessageID)
//
// With a 4-byte tenant, a 20-byte address and a campaign id that is the
// message id, the token is 98 characters. Token accepts any Subject, but
// Parse refuses a token over MaxTokenLen; Headers checks that bound.
func (s *Signer) Token(sub Subject) string {
	p := make([]byte, 0, 64+len(sub.Tenant)+len(sub.Address)+len(sub.CampaignID)+len(sub.MessageID))
	p = append(p, tokenVersion)
	p = binary.AppendVarint(p, int64(sub.Index))
	p = appendString(p, sub.Tenant)
	p = appendString(p, sub.Address)
	p = appendID(p, sub.MessageID)
	if sub.CampaignID == sub.MessageID {
		p = append(p, idSameAsMessage)
	} else {
		p = appendID(p, sub.CampaignID)
	}
	p = append(p, mac(s.keys[0], tokenLabel, p, tokenMACBytes)...)
	return encoding.EncodeToString(p)
}

func appendString(p []byte, v string) []byte {
	p = binary.AppendUvarint(p, uint64(len(v)))
	return append(p, v...)
}

func appendID(p []byte, id string) []byte {
	if b, ok := packID(id); ok {
		return append(append(p, idPacked), b...)
	}
	return appendString(append(p, idRaw), id)
}

// Parse checks token, in any letter case, and returns the Subject it names.
// It returns ErrInvalid for anything Token did not make with one of the
// Signer's secrets.
func (s *Signer) Parse(token string) (Subject, error) {
	b, ok := decode(token, MaxTokenLen)
	if !ok || len(b) <= tokenMACBytes {
		return Subject{}, ErrInvalid
	}
	payload, sum := b[:len(b)-tokenMACBytes], b[len(b)-tokenMACBytes:]
	if !s.verify(tokenLabel, payload, sum) {
		return Subject{}, ErrInvalid
	}
	// The payload is ours from here; the checks below guard against a
	// version this code does not know rather than against forgery.
	r := reader{b: payload}
	if r.byte() != tokenVersion {
		return Subject{}, ErrInvalid
	}
	var sub Subject
	idx := r.varint()
	sub.Tenant = r.string()
	sub.Address = r.string()
	sub.MessageID = r.id("")
	sub.CampaignID = r.id(sub.MessageID)
	if r.bad || len(r.b) != 0 || int64(int(idx)) != idx {
		return Subject{}, ErrInvalid
	}
	sub.Index = int(idx)
	return sub, nil
}

// reader decodes a payload; any error sets bad and makes later reads
// return zero values.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) varint() int64 {
	if r.bad {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.bad {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.bad = true
		return ""
	}
	return string(r.take(int(n)))
}

// id reads an id; message is what idSameAsMessage stands for.
func (r *reader) id(message string) string {
	switch r.byte() {
	case idRaw:
		return r.string()
	case idPacked:
		if b := r.take(packedIDBytes); b != nil {
			return encoding.EncodeToString(b)
		}
	case idSameAsMessage:
		return message
	default:
		r.bad = true
	}
	return ""
}

// MailtoToken returns the short token for the mailto address of one
// recipient of a message, at most MaxMailtoTokenLen characters:
//
//	base32(id || uvarint index || HMAC-SHA256(secret, label || id || uvarint index)[:12])
//
// where id is the 15 bytes of messageID. messageID must be a message id (24
// characters of [a-z2-7], any case) and index must not be negative; for
// anything else MailtoToken returns "", which Headers reports as an error
// before it would be used.
func (s *Signer) MailtoToken(messageID string, index int) string {
	id, ok := packID(strings.ToLower(messageID))
	if !ok || index < 0 {
		return ""
	}
	p := binary.AppendUvarint(id, uint64(index))
	p = append(p, mac(s.keys[0], mailtoLabel, p, mailtoMACBytes)...)
	return encoding.EncodeToString(p)
}

// ParseMailto checks a token from a mailto local part (after MailtoPrefix),
// in any letter case, and returns the message id, in lower case, and the
// recipient index it names. It returns ErrInvalid for anything MailtoToken
// did not make with one of the Signer's secrets.
func (s *Signer) ParseMailto(token string) (messageID string, index int, err error) {
	b, ok := decode(token, MaxMailtoTokenLen)
	if !ok || len(b) < packedIDBytes+1+mailtoMACBytes {
		return "", 0, ErrInvalid
	}
	payload, sum := b[:len(b)-mailtoMACBytes], b[len(b)-mailtoMACBytes:]
	if !s.verify(mailtoLabel, payload, sum) {
		return "", 0, ErrInvalid
	}
	v, n := binary.Uvarint(payload[packedIDBytes:])
	if n <= 0 || packedIDBytes+n != len(payload) || v > math.MaxInt {
		return "", 0, ErrInvalid
	}
	return encoding.EncodeToString(payload[:packedIDBytes]), int(v), nil
}
