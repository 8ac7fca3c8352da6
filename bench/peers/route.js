// Site for the njs peer: uid 1..100 -> s1, 101..200 -> s2, other integer -> s3.
// njs runs every request in a fresh clone of the VM, so a counter here would
// restart at every request (shared dictionaries only came in njs 0.8). Missing
// or non-numeric uid therefore returns "any", an upstream that nginx itself
// round-robins over one server per site.
function site(r) {
    var uid = r.headersIn.uid;
    if (uid === undefined || !/^-?[0-9]+$/.test(uid)) {
        return 'any';
    }
    var n = parseInt(uid, 10);
    if (n >= 1 && n <= 100) {
        return 's1';
    }
    if (n >= 101 && n <= 200) {
        return 's2';
    }
    return 's3';
}

export default { site };
