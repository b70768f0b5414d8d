package dsn

import "strings"

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// validStatus returns the RFC 3463 §2 status code at the start of a Status
// field value (RFC 3464 §2.3.4), or "" when there is none. Trailing text,
// such as a comment some MTAs append ("5.0.0 (permanent failure)"), is
// dropped.
func validStatus(v string) string {
	f := strings.Fields(v)
	if len(f) == 0 {
		return ""
	}
	s := strings.TrimSuffix(f[0], ";")
	if n := enhancedLen(s, 0); n > 0 && n == len(s) {
		return s
	}
	return ""
}

// enhancedLen returns the length of the RFC 3463 §2 enhanced status code
// ("class.subject.detail": class 2, 4 or 5, then 1-3 digits twice) starting
// at s[i], or 0 when none starts there.
func enhancedLen(s string, i int) int {
	if i >= len(s) || (s[i] != '2' && s[i] != '4' && s[i] != '5') {
		return 0
	}
	j := i + 1
	for part := 0; part < 2; part++ {
		if j >= len(s) || s[j] != '.' {
			return 0
		}
		j++
		k := j
		for k < len(s) && k-j < 3 && isDigit(s[k]) {
			k++
		}
		if k == j {
			return 0
		}
		j = k
	}
	return j - i
}

// enhancedAt returns the enhanced status code starting at s[i] when it
// stands alone: not preceded by a digit, letter or dot, and not followed by
// a digit or by a dot and a digit. That keeps "192.0.2.1" and "10.5.1.1"
// (addresses) and "v5.1.2" from being read as codes, while "(#5.1.1)",
// "550-5.1.1" and "5.1.1." are.
func enhancedAt(s string, i int) string {
	if i > 0 {
		p := s[i-1]
		if isDigit(p) || p == '.' || p >= 'a' && p <= 'z' || p >= 'A' && p <= 'Z' {
			return ""
		}
	}
	n := enhancedLen(s, i)
	if n == 0 {
		return ""
	}
	end := i + n
	if end < len(s) {
		if isDigit(s[end]) || s[end] == '.' && end+1 < len(s) && isDigit(s[end+1]) {
			return ""
		}
	}
	return s[i:end]
}

// basicCodeAt returns the RFC 5321 §4.2 reply code starting at s[i]: three
// digits, the first 2, 4 or 5, that begin a token (start of text, or after
// whitespace or ;:([<"') and end it (end of text, whitespace, the "-" of a
// multi-line reply, RFC 5321 §4.2.1, or the ":" some MTAs write after it).
// It returns 0 when there is none.
func basicCodeAt(s string, i int) int {
	if i+3 > len(s) || (s[i] != '2' && s[i] != '4' && s[i] != '5') || !isDigit(s[i+1]) || !isDigit(s[i+2]) {
		return 0
	}
	if i > 0 && !strings.ContainsRune(" \t;:([<\"'", rune(s[i-1])) {
		return 0
	}
	if e := i + 3; e < len(s) && s[e] != ' ' && s[e] != '\t' && s[e] != '-' && s[e] != ':' {
		return 0
	}
	return int(s[i]-'0')*100 + int(s[i+1]-'0')*10 + int(s[i+2]-'0')
}

// findBasicCode returns the first reply code in s and its offset, or 0, -1.
func findBasicCode(s string) (code, at int) {
	for i := 0; i+3 <= len(s); i++ {
		if c := basicCodeAt(s, i); c != 0 {
			return c, i
		}
	}
	return 0, -1
}

// statusFromText derives a status code and reply code from free text: a
// Diagnostic-Code or the remote server's words quoted by a non-standard
// bounce.
//
// The enhanced code written right after the reply code ("550 5.1.1",
// "550-5.1.1", "550: 5.1.1") wins; otherwise the first standalone enhanced code of the
// same class as the reply code ("(#5.1.1)" in qmail); otherwise a reply code
// alone gives "class.0.0", the RFC 3463 §3.1 "other or undefined" detail.
// It returns "" and 0 when the text carries no code.
func statusFromText(s string) (status string, code int) {
	code, at := findBasicCode(s)
	if code != 0 {
		j := at + 3
		for j < len(s) && (s[j] == ' ' || s[j] == '-' || s[j] == ':') {
			j++
		}
		if e := enhancedAt(s, j); e != "" && e[0] == s[at] {
			return e, code
		}
	}
	for i := 0; i < len(s); i++ {
		if e := enhancedAt(s, i); e != "" && (code == 0 || e[0] == byte('0'+code/100)) {
			return e, code
		}
	}
	if code != 0 {
		return string(rune('0'+code/100)) + ".0.0", code
	}
	return "", 0
}

// statusClass returns the class digit of a status code, or 0.
func statusClass(status string) byte {
	if status == "" {
		return 0
	}
	return status[0]
}

// finishRecipient fills the derived fields of r: SMTPCode from the
// diagnostic, Status when the Status field was missing or invalid (from the
// diagnostic, else from the action: RFC 3464 §2.3.4 makes Status mandatory,
// and "failed"/"delayed" imply class 5/4), and Action when missing (from the
// status class, RFC 3463 §3.1).
func finishRecipient(r *Recipient, statusField string) {
	derived, code := statusFromText(r.DiagnosticCode)
	r.SMTPCode = code
	r.Status = validStatus(statusField)
	if r.Status == "" {
		r.Status = derived
	}
	r.Action = strings.ToLower(strings.TrimSpace(r.Action))
	if f := strings.Fields(r.Action); len(f) > 0 {
		// "failed (bad destination mailbox)" and the like.
		r.Action = strings.TrimSuffix(f[0], ";")
	}
	if r.Action == "" {
		switch statusClass(r.Status) {
		case '5':
			r.Action = ActionFailed
		case '4':
			r.Action = ActionDelayed
		case '2':
			r.Action = ActionDelivered
		}
	}
	if r.Status == "" {
		switch r.Action {
		case ActionFailed:
			r.Status = "5.0.0"
		case ActionDelayed:
			r.Status = "4.0.0"
		case ActionDelivered, ActionRelayed, ActionExpanded:
			r.Status = "2.0.0"
		}
	}
}
