"""The help-center corpus and the support tickets' text, generated from topic templates.

An article covers one problem on one platform (a help center's usual shape); a ticket describes one
problem on the customer's own device, so its relevant articles are known exactly.
"""

from __future__ import annotations

import numpy as np
import polars as pl

PLATFORMS: dict[str, tuple[str, list[str]]] = {
    # device -> (article wording, ticket wordings)
    "ios": ("iPhone and iPad", ["on my iphone", "on the ipad app", "using the ios app"]),
    "android": ("Android", ["on my android phone", "in the android app", "on my samsung phone"]),
    "web": ("web browser", ["in chrome", "on the website", "in my browser on the laptop"]),
    "smart_tv": ("smart TV", ["on my smart tv", "on the tv app", "on our living room tv"]),
}

# topic -> problem -> (article title, article keywords, ticket sentences)
PROBLEMS: dict[str, dict[str, tuple[str, str, list[str]]]] = {
    "billing": {
        "card_declined": (
            "Payment declined or card failed",
            "payment declined card failed bank authorization update payment method retry charge",
            ["my payment was declined", "the card keeps failing", "it says payment failed"],
        ),
        "double_charge": (
            "Charged twice for one month",
            "duplicate charge billed twice statement pending authorization refund",
            ["i was charged twice this month", "there are two charges on my statement"],
        ),
        "refund_request": (
            "Requesting a refund",
            "refund money back eligible request billing period partial refund",
            ["i want a refund", "can i get my money back for this month"],
        ),
        "price_change": (
            "Why did my price change",
            "price increase plan price change notice tax new rate",
            ["my bill went up", "why is the price higher now"],
        ),
    },
    "playback": {
        "buffering": (
            "Video keeps buffering",
            "buffering loading spinner slow stream bandwidth quality network speed",
            ["the video keeps buffering", "it is stuck loading all the time", "playback is slow"],
        ),
        "no_audio": (
            "No sound or audio out of sync",
            "audio sound missing out of sync volume dolby speakers",
            ["there is no sound", "the audio is out of sync with the picture"],
        ),
        "error_code": (
            "Playback error codes explained",
            "error code playback failed something went wrong restart player cache",
            ["i get an error code when i press play", "playback fails with an error"],
        ),
        "subtitles": (
            "Subtitles missing or wrong language",
            "subtitles captions language missing wrong timing settings",
            ["subtitles do not show up", "the captions are in the wrong language"],
        ),
    },
    "account": {
        "password_reset": (
            "Reset a forgotten password",
            "password reset forgot link email sign in locked",
            ["i forgot my password", "the password reset link does not work"],
        ),
        "email_change": (
            "Change the email on your account",
            "email address change update account settings verify",
            ["i need to change my email address", "how do i update my email"],
        ),
        "two_factor": (
            "Two-step verification codes",
            "verification code two step sms authenticator not received",
            ["i never get the verification code", "the two step code is not arriving"],
        ),
        "profile_locked": (
            "Profile locked or PIN forgotten",
            "profile lock pin forgotten kids profile access",
            ["my profile is locked", "i forgot the profile pin"],
        ),
    },
    "devices": {
        "tv_sign_in": (
            "Signing in with a code",
            "sign in code activate device pair link tv login",
            ["i cannot sign in", "the activation code does not work"],
        ),
        "casting": (
            "Casting and screen mirroring",
            "cast chromecast airplay mirror screen connect same network",
            ["casting does not work", "i cannot cast to the tv"],
        ),
        "app_crash": (
            "The app crashes or freezes",
            "app crash freeze close unexpectedly reinstall update version",
            ["the app keeps crashing", "the app freezes and closes"],
        ),
        "downloads": (
            "Downloading titles to watch offline",
            "download offline storage limit expired downloads",
            ["downloads disappear", "i cannot download episodes to watch offline"],
        ),
    },
    "content": {
        "missing_title": (
            "A title is no longer available",
            "title removed leaving catalog licence expired watchlist",
            ["a show i was watching disappeared", "my movie is gone from the catalog"],
        ),
        "region": (
            "Content not available in your country",
            "region country travel not available location vpn",
            ["this title is not available in my country", "i am travelling and cannot watch"],
        ),
        "recommendations": (
            "Improving your recommendations",
            "recommendations rating thumbs history personalize row",
            ["the recommendations are bad", "it keeps recommending shows i hate"],
        ),
        "parental_controls": (
            "Setting parental controls",
            "parental controls maturity rating kids restrict pin",
            ["how do i set parental controls", "my kids can see adult shows"],
        ),
    },
    "subscription": {
        "cancel": (
            "How to cancel your membership",
            "cancel membership end subscription stop billing last day",
            ["i want to cancel", "how do i end my subscription"],
        ),
        "pause": (
            "Pausing your membership",
            "pause membership hold months resume later",
            ["can i pause my plan for a while", "i want to put my account on hold"],
        ),
        "change_plan": (
            "Changing your plan",
            "change plan upgrade downgrade premium basic standard screens",
            ["i want to change my plan", "how do i upgrade to premium"],
        ),
        "student_discount": (
            "Discounts and promotions",
            "discount promotion offer student code coupon redeem",
            ["do you have a student discount", "my promo code does not work"],
        ),
    },
}

ARTICLE_KINDS = ("Troubleshooting", "FAQ", "Step-by-step guide")
OPENERS = ["hi", "hello", "hey", "good morning", "hi team", "help"]
CLOSERS = ["please help", "thanks", "what should i do", "this is really annoying", "any ideas", ""]


def problems() -> pl.DataFrame:
    """One row per (topic, problem): the unit a ticket is about."""
    rows = [
        {"topic": topic, "problem": problem}
        for topic, by_problem in PROBLEMS.items()
        for problem in by_problem
    ]
    return pl.DataFrame(rows)


def help_articles() -> pl.DataFrame:
    """The help center: every problem on every platform, in each article kind."""
    rows = []
    for topic, by_problem in PROBLEMS.items():
        for problem, (title, keywords, sentences) in by_problem.items():
            for device, (platform, ticket_words) in PLATFORMS.items():
                for kind in ARTICLE_KINDS:
                    body = (
                        f"{kind}: {title.lower()} on {platform}. {keywords}. "
                        f"Customers often write: {'; '.join(sentences)}. "
                        f"Applies to {platform} ({', '.join(ticket_words)})."
                    )
                    rows.append(
                        {
                            "topic": topic,
                            "problem": problem,
                            "device": device,
                            "title": f"{title} ({platform}) - {kind}",
                            "body": body,
                        }
                    )
    return (
        pl.DataFrame(rows)
        .with_row_index("article_id", offset=1001)
        .with_columns(pl.col("article_id").cast(pl.Int64))
    )


def _phrase_table() -> pl.DataFrame:
    rows = [
        {"problem_key": f"{topic}/{problem}", "sentences": spec[2]}
        for topic, by_problem in PROBLEMS.items()
        for problem, spec in by_problem.items()
    ]
    return pl.DataFrame(rows)


def _platform_table() -> pl.DataFrame:
    return pl.DataFrame([{"device": d, "wheres": words} for d, (_, words) in PLATFORMS.items()])


def ticket_texts(
    rng: np.random.Generator, problem_key: np.ndarray, device: np.ndarray
) -> pl.Series:
    """Ticket text for each (problem, device) pair; `problem_key` holds 'topic/problem' keys."""
    n = len(problem_key)
    frame = pl.DataFrame(
        {
            "problem_key": problem_key,
            "device": device,
            "opener": np.asarray(OPENERS)[rng.integers(0, len(OPENERS), n)],
            "closer": np.asarray(CLOSERS)[rng.integers(0, len(CLOSERS), n)],
            "u_sentence": rng.random(n),
            "u_where": rng.random(n),
        },
        schema_overrides={"problem_key": pl.Utf8, "device": pl.Utf8},
    )
    frame = frame.join(_phrase_table(), on="problem_key", how="left", maintain_order="left")
    frame = frame.join(_platform_table(), on="device", how="left", maintain_order="left")
    sentence = pl.col("sentences").list.get(
        (pl.col("u_sentence") * pl.col("sentences").list.len()).floor().cast(pl.Int64)
    )
    where = pl.col("wheres").list.get(
        (pl.col("u_where") * pl.col("wheres").list.len()).floor().cast(pl.Int64)
    )
    text = pl.concat_str(
        [
            pl.col("opener"),
            pl.lit(", "),
            sentence,
            pl.lit(" "),
            where,
            pl.lit(". "),
            pl.col("closer"),
        ]
    ).str.strip_chars()
    return frame.select(text.alias("text")).to_series()
