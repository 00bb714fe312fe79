# Sourced by the benches that run against sqld (replicas.sh, operators.sh): the shared 0.24.33 binary
# unpacked if missing, a JWT key pair and token, and a fresh sqld (namespaces on, JWT auth).
# Needs OUT, SQLD, SQLD_PORT and SQLD_ADMIN_PORT set; sets TOKEN, and SQLD_PID while one runs.
if [ ! -x "$SQLD" ]; then xz -dc ../shared/sqld/sqld.xz > "$SQLD.partial" && chmod +x "$SQLD.partial" && mv "$SQLD.partial" "$SQLD"; fi

# An Ed25519 key pair; the token is an EdDSA JWT {"a":"rw"} signed with it (openssl signs raw input).
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
openssl genpkey -algorithm ed25519 -out "$OUT/jwt.key" 2> /dev/null
openssl pkey -in "$OUT/jwt.key" -pubout -out "$OUT/jwt.pub"
SIGNED="$(printf '{"alg":"EdDSA","typ":"JWT"}' | b64url).$(printf '{"a":"rw"}' | b64url)"
printf '%s' "$SIGNED" > "$OUT/jwt.input"   # Ed25519 signs in one shot: from a file, not a pipe
TOKEN="$SIGNED.$(openssl pkeyutl -sign -inkey "$OUT/jwt.key" -rawin -in "$OUT/jwt.input" | b64url)"

start_sqld() {
    rm -rf "$OUT/sqld-data"
    "$SQLD" --db-path "$OUT/sqld-data" --http-listen-addr 127.0.0.1:$SQLD_PORT \
        --admin-listen-addr 127.0.0.1:$SQLD_ADMIN_PORT --auth-jwt-key-file "$OUT/jwt.pub" \
        --enable-namespaces --disable-default-namespace --no-welcome > "$OUT/sqld.log" 2>&1 &
    SQLD_PID=$!
    for _ in $(seq 100); do curl -s http://127.0.0.1:$SQLD_PORT/health > /dev/null && return; sleep 0.1; done
    echo "sqld did not start: $(cat "$OUT/sqld.log")" >&2; exit 1
}

stop_sqld() { kill "$SQLD_PID"; wait "$SQLD_PID" || true; SQLD_PID=; }
